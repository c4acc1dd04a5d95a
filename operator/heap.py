"""The operator process' C heap (glibc malloc): fewer arenas, and freed memory handed back.

The operator's threads (first-step and settle workers, side requests, the event poster, kopf's executor)
each get a malloc arena of their own from glibc (up to 8 per core); what a burst of new objects allocates
in them (decoded API answers, index text) is freed afterwards but stays mapped in the arena, so the RSS keeps
the burst's high-water mark (21 MiB of 56 MiB malloc'd was free at 2,000 Hypotheses). Two arenas and a
periodic `malloc_trim` give that memory back. Elsewhere than glibc (musl, macOS) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger("cambrian.operator")

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2
TRIM_SECONDS = 10.0


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; call before the process starts its threads. False where it does not apply."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def trim() -> bool:
    """Give the free memory of every arena back to the system (True when some was)."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


def keep_trimming(every: float = TRIM_SECONDS) -> threading.Thread | None:
    """A daemon thread that trims every `every` seconds (a few milliseconds each); None without glibc."""
    if _libc() is None:
        return None

    def loop() -> None:
        while not stop.wait(every):
            trim()

    stop = threading.Event()
    thread = threading.Thread(target=loop, daemon=True, name="malloc-trim")
    thread.start()
    return thread
