"""Polling for the cluster tests: wait until a predicate holds, or fail with what was awaited and the logs."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def poll(what: str, pred: Callable[[], T], timeout: float = 90, context: Callable[[], str] = lambda: "",
         interval: float = 0.5) -> T:
    """The first truthy value of pred(); AssertionError naming WHAT and CONTEXT() (e.g. the operator's log)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}{context()}")


def running(procs) -> list:
    """The psutil processes of `procs` still running: not exited, not a zombie (is_running() compares start times,
    so a reused pid is another process)."""
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out
