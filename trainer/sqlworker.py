"""DuckDB expressions over rows, evaluated in a child process under the trusted side's limits (cambrian/sqllimits.py).

A reward is an agent's SQL and a label or proxy a declaration's: DuckDB's own memory_limit does not bound what a
scalar function allocates (repeat(), range() grow past it), so the process that evaluates them is bounded by the
operating system (its address space, and the sandbox's seccomp filter: no new process, no network socket) and by a
wall clock (the parent kills it at the deadline); its DuckDB has
no file or network access, few threads and a locked configuration. The rows go to it pickled (it trusts its
parent) and the values come back as Arrow IPC bytes (the parent never unpickles what the child sends).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from multiprocessing.connection import Connection

import numpy as np
import pandas as pd
import pyarrow as pa

from cambrian.sqllimits import SqlLimitExceeded, SqlLimits


class SqlError(ValueError):
    """DuckDB refused or failed an expression (its first line)."""


# A long-lived caller (a warm worker slot, trainer/warm.py) keeps one started, never-used child ready, so that a
# pass does not wait for a child's imports (about 1 s): (its limits as JSON, the process). Each pass still gets a
# fresh process of its own, which no expression has run in before.
_spare: "tuple[str, subprocess.Popen] | None" = None
_keep_spare = False


def keep_a_spare() -> None:
    global _keep_spare
    _keep_spare = True
    _refill(json.dumps(SqlLimits.from_env().__dict__))


def _start(limits_json: str) -> subprocess.Popen:
    # -P: the working directory is not on the child's path (a repository root's operator/ would shadow the stdlib)
    return subprocess.Popen([sys.executable, "-P", "-m", "cambrian.trainer.sqlworker", limits_json],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _take(limits_json: str) -> subprocess.Popen | None:
    global _spare
    spare, _spare = _spare, None
    if spare is None:
        return None
    if spare[0] == limits_json and spare[1].poll() is None:
        return spare[1]
    spare[1].kill()  # other limits (the environment changed) or dead: never used, so nothing is lost
    spare[1].wait()
    return None


def _refill(limits_json: str) -> None:
    global _spare
    if _keep_spare and _spare is None:
        _spare = (limits_json, _start(limits_json))


class SqlWorker:
    """One child process that evaluates expressions for a whole pass over a data set (close() when done)."""

    def __init__(self, limits: SqlLimits | None = None):
        self.limits = limits or SqlLimits.from_env()
        key = json.dumps(self.limits.__dict__)
        self._proc = _take(key) or _start(key)
        _refill(key)
        self._send = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()

    def evaluate(self, df: pd.DataFrame, expressions: dict[str, str]) -> dict[str, np.ndarray]:
        """Each expression over the rows of `df` as float64, NULL as a masked value (np.ma)."""
        seconds = self.limits.wall_seconds(len(df))
        try:
            self._send.send((df, expressions))
            ready = self._recv.poll(seconds)
            reply = self._recv.recv_bytes() if ready else None
        except (EOFError, OSError):
            reply = b""
        if reply is None:
            self.close()
            raise SqlLimitExceeded(f"ran past its time limit of {seconds:.0f} s on {len(df)} rows")
        if not reply:
            self.close()
            raise SqlLimitExceeded(f"its evaluating process ended ({self._ended()}): past its memory limit of "
                                   f"{self.limits.memory_mb} MiB or its CPU time")
        kind, body = reply[:2], reply[2:]
        if kind == b"mm":
            raise SqlLimitExceeded(f"ran past its memory limit of {self.limits.memory_mb} MiB: {body.decode()}")
        if kind != b"ok":
            raise SqlError(body.decode())
        table = pa.ipc.open_stream(body).read_all()
        out = {}
        for name in expressions:
            column = table.column(name)
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # NULL reads as NaN here ...
            nulls = column.is_null().to_numpy(zero_copy_only=False)
            out[name] = np.ma.MaskedArray(values, nulls) if nulls.any() else values  # ... and is masked
        return out

    def _ended(self) -> str:
        code = self._proc.wait()
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    def close(self) -> None:
        for conn in (self._send, self._recv):
            conn.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def _serve(limits: SqlLimits, recv: Connection, send: Connection) -> None:
    """The child: limits first, then one reply per request until the parent closes the pipe."""
    from cambrian.trainer.sandbox import SandboxUnavailable, apply_limits, load_filter

    apply_limits(as_mb=limits.memory_mb)
    try:  # the sandbox's seccomp filter: no new process, no network socket, none of its denied calls
        load_filter()
    except SandboxUnavailable as exc:  # no libseccomp here: DuckDB's own settings and the limits remain
        print(f"sql worker: {exc}; running without the seccomp filter", file=sys.stderr)
    import duckdb

    double = duckdb.sqltypes.DOUBLE if hasattr(duckdb, "sqltypes") else duckdb.typing.DOUBLE
    con = duckdb.connect(config=limits.duckdb_config())
    while True:
        try:
            df, expressions = recv.recv()
        except EOFError:
            return
        try:
            # each expression is bound as an expression object of a projection, never pasted into a statement
            table = con.from_df(df).select(*(duckdb.SQLExpression(sql).cast(double).alias(name)
                                             for name, sql in expressions.items())).to_arrow_table()
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            reply = b"ok" + sink.getvalue().to_pybytes()
        except (MemoryError, duckdb.OutOfMemoryException) as exc:
            reply = b"mm" + str(exc).splitlines()[0].encode()[:300]
        except Exception as exc:  # noqa: BLE001 - DuckDB's message goes back to say what the SQL did wrong
            reply = b"er" + (str(exc).splitlines() or [type(exc).__name__])[0].encode()[:500]
        del df
        send.send_bytes(reply)


if __name__ == "__main__":
    out = os.dup(1)
    os.dup2(2, 1)  # stdout is the reply pipe: anything printed goes to stderr
    _serve(SqlLimits(**json.loads(sys.argv[1])), Connection(0, writable=False), Connection(out, readable=False))
