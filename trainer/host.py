"""A bundle's exported program, run in a contained process of its own and called over a pipe.

Loading a torch.export archive may unpickle what the candidate's process wrote into it (torch.export.load
uses pickle for some payloads), so no trusted process loads one: the server and every other caller of
`load_bundle` send item and user ids to a host process in trainer/sandbox.py's sandbox (the bundle folder
read-only, nothing else of the host) and read float32 scores back.

Wire format, little-endian: a request is `u64 m` then m int64 user ids and m int64 item ids; the answer is
`u64 m` then m float32 scores. The host first writes READY once the program has loaded. Everything it writes is
untrusted: sizes are checked and a host that is late, short or garbled is killed (the next call starts a new one).
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from cambrian.trainer.sandbox import INPUT, SCRATCH, StageFailure, contained_environment, start_contained, stop_contained

READY = b"cambrian-host-ready\n"
HEADER = struct.Struct("<Q")
MAX_ROWS = 1 << 26  # one request; far above a /rank body's limit
Containment = Literal["auto", "bwrap", "none"]


def read_exact(f: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class ProgramHost:
    """Scores (user, item) pairs with the exported program of one bundle folder, in a contained process."""

    def __init__(self, bundle_dir: Path, sandbox: Containment = "auto", memory_mb: int = 8192,
                 load_seconds: float = 120.0, call_seconds: float = 30.0):
        self.bundle_dir = Path(bundle_dir).resolve()
        # auto means bwrap: a bundle's program may come from any candidate. `none` is for an outer boundary
        # that already contains this process (a model server's pod).
        self.contain = sandbox != "none"
        self.memory_mb, self.load_seconds, self.call_seconds = memory_mb, load_seconds, call_seconds
        self._work = tempfile.TemporaryDirectory(prefix="cambrian-host-")
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, ProgramHost._cleanup, self._work, [None])

    @staticmethod
    def _cleanup(work: tempfile.TemporaryDirectory, holder: list) -> None:
        if holder[0] is not None:
            stop_contained(holder[0])
        work.cleanup()

    @property
    def log(self) -> Path:
        return Path(self._work.name) / "host.log"

    def start(self) -> None:
        """Start the host and wait until its program has loaded; a program that cannot load fails with stage export."""
        if self._proc is not None:
            return
        scratch = Path(self._work.name) / "scratch"
        scratch.mkdir(exist_ok=True)
        where = (INPUT, SCRATCH) if self.contain else (str(self.bundle_dir), str(scratch))
        argv = [sys.executable, "-m", "cambrian.trainer.contained", "host", *where, "--as-mb", str(self.memory_mb),
                "--fsize-mb", "64", "--nproc", "256"]
        self._proc = start_contained(self.bundle_dir, scratch, argv, contained_environment(OMP_NUM_THREADS="1"), self.log,
                                     contain=self.contain)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, ProgramHost._cleanup, self._work, [self._proc])
        try:
            got = self._read(len(READY), self.load_seconds)
        except StageFailure as exc:
            raise StageFailure("export", f"the bundle's exported program did not load: {exc.reason}") from None
        if got != READY:
            self._fail("export", "the bundle's program host wrote something else than its ready line")

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users = np.ascontiguousarray(users, dtype="<i8")
        items = np.ascontiguousarray(items, dtype="<i8")
        m = users.shape[0]
        if users.shape != (m,) or items.shape != (m,) or m > MAX_ROWS:
            raise ValueError(f"users and items must be equal-length flat arrays of at most {MAX_ROWS}")
        with self._lock:
            self.start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(HEADER.pack(m) + users.tobytes() + items.tobytes())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._fail("crash", "the bundle's program host is gone")
            (echo,) = HEADER.unpack(self._read(HEADER.size, self.call_seconds))
            if echo != m:
                self._fail("crash", f"the bundle's program host answered {echo} scores for {m} rows")
            scores = np.frombuffer(self._read(4 * m, self.call_seconds), dtype="<f4").astype(np.float32)
        return scores

    def _read(self, n: int, seconds: float) -> bytes:
        """n bytes from the host within `seconds`, or the host is killed."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + seconds
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._fail("timeout", f"the bundle's program host gave no answer within {seconds:g}s")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                self._fail("crash", f"the bundle's program host ended: {self._log_line()}")
            buf += chunk
        return bytes(buf)

    def _log_line(self) -> str:
        try:
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            lines = []
        return " ".join(lines[-1].split())[:300] if lines else "no output"

    def _fail(self, stage: str, reason: str):
        self.close_process()
        raise StageFailure(stage, reason)

    def close_process(self) -> None:
        if self._proc is not None:
            stop_contained(self._proc)
            self._proc = None

    def close(self) -> None:
        self.close_process()
        self._finalizer()


def serve_program(program: Path, catalogue_file: Path, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The host's side (in the sandbox, called by trainer/contained.py): load, say READY, answer until EOF."""
    import torch

    from cambrian.trainer.bundle import load_program
    from cambrian.trainer.features import load_catalogue

    torch.set_num_threads(1)  # a slate is too small to split (bench/README.md, serving)
    module = load_program(program)
    catalogue = load_catalogue(catalogue_file)
    stdout.write(READY)
    stdout.flush()
    while True:
        head = stdin.read(HEADER.size)
        if not head:
            return
        if len(head) < HEADER.size:
            head += read_exact(stdin, HEADER.size - len(head))
        (m,) = HEADER.unpack(head)
        users = np.frombuffer(read_exact(stdin, 8 * m), dtype="<i8")
        items = np.frombuffer(read_exact(stdin, 8 * m), dtype="<i8")
        feats = catalogue.features(users, items)
        args = [torch.from_numpy(np.ascontiguousarray(feats[k])) for k in catalogue.spec.inputs]
        with torch.inference_mode():
            out = module(*args).float().reshape(-1).numpy().astype("<f4")
        if out.shape != (m,):
            raise ValueError(f"the program returned {out.shape[0]} scores for {m} rows")
        stdout.write(HEADER.pack(m) + out.tobytes())
        stdout.flush()
