"""Limits on SQL the trusted side did not write: an agent's reward, a declaration's label and proxies, a warehouse
metric. Only the trusted side sets them (its environment, never a config an agent's delta can change), and the
engine or the operating system enforces them: the parse checks only give an honest mistake fast feedback.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from cambrian.errors import ConfigError


class SqlLimitExceeded(ConfigError):
    """SQL ran past a limit (time, memory): the message says which, in one line."""


@dataclass(frozen=True)
class SqlLimits:
    memory_mb: int = 8192  # the evaluating process's address space (OS; as the trainer sandbox's: DuckDB and Arrow reserve
    # far more virtual memory than they touch, and 2048 failed a 65,536-row batch); DuckDB's own memory_limit is half
    threads: int = 1
    seconds: float = 30.0  # wall clock per evaluation ...
    row_seconds: float = 1e-4  # ... plus this per row it reads (honest expressions run about 1 µs a row)

    @classmethod
    def from_env(cls, prefix: str = "CAMBRIAN_SQL_", environ: Mapping[str, str] = os.environ, **defaults) -> "SqlLimits":
        """PREFIX{MEMORY_MB,THREADS,SECONDS,ROW_SECONDS} from the environment, else `defaults`, else the above."""
        base = cls(**defaults)
        fields = {"memory_mb": int, "threads": int, "seconds": float, "row_seconds": float}
        values = {}
        for name, kind in fields.items():
            text = environ.get(prefix + name.upper())
            try:
                values[name] = kind(text) if text else getattr(base, name)
            except ValueError:
                raise ConfigError(f"{prefix}{name.upper()}={text!r}: expected a number") from None
            if values[name] < 0 or (name != "row_seconds" and values[name] == 0):
                raise ConfigError(f"{prefix}{name.upper()}={text!r}: expected a positive number")
        return cls(**values)

    def wall_seconds(self, rows: int) -> float:
        return self.seconds + rows * self.row_seconds

    def duckdb_config(self) -> dict[str, object]:
        """A DuckDB connection's settings: no file or network access, bounded memory and threads, and locked so
        the SQL cannot change them back (set_config, SET)."""
        return {"enable_external_access": False, "memory_limit": f"{max(self.memory_mb // 2, 64)}MB",
                "threads": self.threads, "lock_configuration": True}


@contextmanager
def watchdog(interrupt: Callable[[], None], seconds: float) -> Iterator[threading.Event]:
    """Calls interrupt() once `seconds` have passed, and again every 0.1 s until the block ends, so a statement
    started after the first call is stopped too. Yields an Event that is set once it has fired."""
    done, fired = threading.Event(), threading.Event()

    def run() -> None:
        if done.wait(seconds):
            return
        fired.set()
        while not done.is_set():
            interrupt()
            done.wait(0.1)

    thread = threading.Thread(target=run, name="sql-watchdog", daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        done.set()
        thread.join()
