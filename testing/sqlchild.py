"""The process that evaluates a SqlWorker's SQL (trainer/sqlworker.py), seen from outside through /proc: in the
sandbox it is bubblewrap's grandchild, not the process the worker started."""

from __future__ import annotations

import os
import sys

import psutil

NAMESPACES = ("net", "mnt", "pid", "user", "ipc", "uts")


def evaluator(worker) -> psutil.Process:
    """The Python process serving `worker` (the one the worker started, or the one in its tree)."""
    top = psutil.Process(worker._proc.pid)
    for p in [top, *top.children(recursive=True)]:
        if p.cmdline()[:4] == [sys.executable, "-P", "-m", "cambrian.trainer.sqlworker"]:
            return p
    raise AssertionError(f"no SQL evaluator in the tree of {top.pid}: {top.cmdline()}")


def shared_namespaces(pid: int) -> list[str]:
    """The namespaces `pid` shares with this process."""
    return [ns for ns in NAMESPACES if os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}")]
