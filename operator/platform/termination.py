"""Run `cambrian train ...` in a training pod and leave its outcome in the termination message.

    python -m cambrian.operator.platform.termination --out /out -- cambrian train --config ... --out /out

Kubernetes keeps at most 4 KiB of /dev/termination-log per container and shows it in the pod's
status (containerStatuses[].state.terminated.message), so the operator reads results without
exec, logs or shared storage. This wrapper writes, after the command exits (same exit code):

    success: {"v": 1, "metrics": {numeric metrics of OUT/metrics.json}, "bundle": "OUT/bundle"}
             (+ "reused": KEY when the scorer took the run from the run store, trainer/runstore.py)
    failure: {"v": 1, "exit_code": N, "error": {"stage": ..., "reason": ...}}   (OUT/error.json)

Non-numeric metrics are dropped and the reason is cut to fit. Trainers may also write this file
themselves; the wrapper overwrites it with the same shape.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

LIMIT = 4096
DEFAULT_PATH = "/dev/termination-log"


def compact(out_dir: Path, exit_code: int) -> str:
    msg: dict[str, Any] = {"v": 1}
    if exit_code == 0:
        try:
            metrics = json.loads((out_dir / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            msg.update(exit_code=exit_code, error={"stage": "metrics", "reason": f"no readable metrics.json: {exc}"})
            return _fit(msg)
        msg["metrics"] = {
            k: v for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if (out_dir / "bundle").is_dir():
            msg["bundle"] = str(out_dir / "bundle")
        if isinstance(metrics.get("reused"), str) and len(metrics["reused"]) <= 64:
            msg["reused"] = metrics["reused"]  # a baseline run taken from the run store, not trained again
        return _fit(msg)
    msg["exit_code"] = exit_code
    try:
        err = json.loads((out_dir / "error.json").read_text())
        msg["error"] = {"stage": str(err.get("stage", "")), "reason": str(err.get("reason", ""))}
    except (OSError, ValueError, AttributeError):
        msg["error"] = {"stage": "", "reason": f"exit code {exit_code} without error.json"}
    return _fit(msg)


def _fit(msg: dict[str, Any]) -> str:
    text = json.dumps(msg, separators=(",", ":"))
    while len(text.encode()) > LIMIT:
        if "error" in msg and len(msg["error"]["reason"]) > 16:
            msg["error"]["reason"] = msg["error"]["reason"][: len(msg["error"]["reason"]) // 2] + "…"
        elif msg.get("metrics"):
            msg["metrics"].pop(sorted(msg["metrics"])[-1])
        else:
            break
        text = json.dumps(msg, separators=(",", ":"))
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or "--out" not in argv[: argv.index("--")]:
        print("usage: python -m cambrian.operator.platform.termination --out DIR [--path FILE] -- COMMAND...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    out = Path(opts[opts.index("--out") + 1])
    path = opts[opts.index("--path") + 1] if "--path" in opts else os.environ.get("CAMBRIAN_TERMINATION_LOG", DEFAULT_PATH)
    rc = subprocess.call(command)
    try:
        Path(path).write_text(compact(out, rc))
    except OSError as exc:
        print(f"cannot write the termination message to {path}: {exc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
