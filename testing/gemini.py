"""A loopback server speaking the Gemini REST API, for tests and benchmarks without a key.

The real google-genai client is pointed at it (`http_options=HttpOptions(base_url=replay.url)`); it
answers generateContent calls with recorded response bodies, in order, and keeps every request.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class GeminiReplay:
    """A loopback HTTP server speaking the Gemini REST API: it answers generateContent calls with
    recorded response bodies (in order) and keeps every request body for assertions."""

    def __init__(self, responses: list[dict | str]):
        self.responses = list(responses)
        self.requests: list[dict] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                replay.requests.append({"path": self.path, "body": json.loads(body or b"{}"),
                                        "key": self.headers.get("x-goog-api-key")})
                if not replay.responses:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"code": 500, "message": "no more recorded responses"}}')
                    return
                item = replay.responses.pop(0)
                status = 200
                if isinstance(item, dict) and "__status__" in item:
                    status = item["__status__"]
                    item = item["body"]
                data = (item if isinstance(item, str) else json.dumps(item)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
