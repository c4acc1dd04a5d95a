"""DuckDB SQL the trusted side did not write, evaluated in a contained child process under the trusted side's limits
(cambrian/sqllimits.py): a reward (an agent's), a label or proxy (a declaration's), an agent's analysis query.

The child runs in the candidate trainer's sandbox (trainer/sandbox.py, one implementation): bubblewrap's
namespaces (no network but an empty loopback, no host process, `nobody`), a file system of only the Python runtime
(read-only), an empty /input or the analysis database's own folder (read-only), a private /scratch and bounded
/tmp, a cleared environment, the sandbox's seccomp filter (no new process, no network socket), and its own
process group and PID namespace, so a kill takes the whole tree. Inside it bounds itself: DuckDB's memory_limit
does not bound what a scalar function allocates (repeat(), range() grow past it), so its address space is
limited by the operating system; the parent kills it at a wall-clock deadline; its DuckDB has no file or network
access, few threads and a locked configuration. Where bubblewrap cannot be built, the `auto` policy of
`cambrian train` applies (CAMBRIAN_SANDBOX: auto runs the child with its seccomp filter and limits only, and says
so once; bwrap refuses; none is for an outer boundary such as the training pod). The rows go to it pickled (it
trusts its parent) and the values come back as Arrow IPC bytes (the parent never unpickles what the child sends).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cambrian.sqllimits import SqlLimitExceeded, SqlLimits
from cambrian.trainer.sandbox import (INPUT, bwrap_problem, contained_environment, containment, start_contained,
                                      stop_contained)

START_SECONDS = 120.0  # a child's start-up, before its first request's time limit begins
MAX_ANSWER = 64 << 20  # bytes of one analysis query's answer (its rows are capped, their cells are not)


class SqlError(ValueError):
    """DuckDB refused or failed an expression (its first line)."""


@dataclass
class _Child:
    """A started child: its process (bubblewrap's, leading its group), its private folder and what it was
    started for (the limits, the sandbox policy and the database it sees)."""

    key: str
    proc: subprocess.Popen
    work: Path

    def stop(self) -> None:
        """Its whole tree killed (bubblewrap leads the group; with it goes the PID namespace), its folder gone."""
        stop_contained(self.proc)
        shutil.rmtree(self.work, ignore_errors=True)


# A long-lived caller (a warm worker slot, trainer/warm.py) keeps one started, never-used child ready, so that a
# pass does not wait for a child's imports (about 1 s). Each pass still gets a fresh process of its own, which
# no expression has run in before.
_spare: _Child | None = None
_keep_spare = False
_warned = False


def keep_a_spare() -> None:
    global _keep_spare
    if not _keep_spare:
        atexit.register(_take, "")  # the spare's folder too
    _keep_spare = True
    _refill(SqlLimits.from_env())


def _policy() -> str:
    return os.environ.get("CAMBRIAN_SANDBOX") or "auto"


def _key(limits: SqlLimits, database: Path | None) -> str:
    return json.dumps([limits.__dict__, _policy(), str(database or "")])


def _start(limits: SqlLimits, database: Path | None = None) -> _Child:
    """A child in the sandbox (see the module's docstring); `database`: a DuckDB file it opens read-only, whose
    folder alone it sees besides the runtime."""
    global _warned
    key = _key(limits, database)
    contain = containment(_policy(), must=False)
    if not contain and _policy() == "auto" and not _warned:
        _warned = True
        print(f"sql worker: not contained ({bwrap_problem()}): its seccomp filter, limits and DuckDB's settings "
              "remain", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="cambrian-sql-"))
    empty, scratch = work / "in", work / "scratch"
    empty.mkdir()
    scratch.mkdir()
    argv = [sys.executable, "-P", "-m", "cambrian.trainer.sqlworker", json.dumps(limits.__dict__)]
    if database is not None:
        argv.append(f"{INPUT}/{database.name}" if contain else str(database))
    # -P: the working directory is not on the child's path (a repository root's operator/ would shadow the stdlib)
    try:
        proc = start_contained(database.parent if database is not None else empty, scratch, argv,
                               contained_environment(), None, contain=contain)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _Child(key, proc, work)


def _take(key: str) -> _Child | None:
    global _spare
    spare, _spare = _spare, None
    if spare is None:
        return None
    if spare.key == key and spare.proc.poll() is None:
        return spare
    spare.stop()  # other limits (the environment changed) or dead: never used, so nothing is lost
    return None


def _refill(limits: SqlLimits) -> None:
    global _spare
    if _keep_spare and _spare is None:
        _spare = _start(limits)


class SqlWorker:
    """One child process that evaluates expressions for a whole pass over a data set, or an agent's queries over
    its analysis `database` (a DuckDB file, opened read-only) (close() when done)."""

    def __init__(self, limits: SqlLimits | None = None, database: str | Path | None = None):
        self.limits = limits or SqlLimits.from_env()
        db = Path(database).resolve() if database is not None else None
        self._child = (_take(_key(self.limits, None)) if db is None else None) or _start(self.limits, db)
        self._proc = self._child.proc
        if db is None:
            _refill(self.limits)
        self._send = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        self.closed = self.too_long = self._started = False

    def _receive(self, seconds: float, maxlength: int | None = None) -> bytes | None:
        """The child's next message within `seconds` (None: none came); b"" when it is gone or sent more than
        maxlength (then self.too_long)."""
        try:
            return self._recv.recv_bytes(maxlength) if self._recv.poll(seconds) else None
        except OSError as exc:  # a message over maxlength, or the child is gone
            self.too_long = "bad message length" in str(exc)
            return b""
        except EOFError:
            return b""

    def _ask(self, request: tuple, seconds: float, what: str, maxlength: int | None = None) -> bytes:
        """The reply's body to `request`, within `seconds`; past a limit the child's tree is killed."""
        if not self._started:  # its start (imports, about 1 s; more under load) is not the SQL's time
            started = self._receive(START_SECONDS)
            if started is None:
                self.close()
                raise SqlLimitExceeded(f"its evaluating process did not start within {START_SECONDS:.0f} s")
            self._started = started == b"rd"
        try:
            self._send.send(request)
        except OSError:
            pass  # it is gone: the reply says so
        reply = self._receive(seconds, maxlength) if self._started else b""
        if reply is None:
            self.close()
            raise SqlLimitExceeded(f"ran past its time limit of {seconds:.0f} s{what}")
        if self.too_long:
            self.close()
            raise SqlLimitExceeded(f"its answer was larger than {maxlength >> 20} MiB")
        if not reply:
            ended = self._ended()
            self.close()
            raise SqlLimitExceeded(f"its evaluating process ended ({ended}): past its memory limit of "
                                   f"{self.limits.memory_mb} MiB or its CPU time")
        kind, body = reply[:2], reply[2:]
        if kind == b"mm":
            raise SqlLimitExceeded(f"ran past its memory limit of {self.limits.memory_mb} MiB: {body.decode()}")
        if kind != b"ok":
            raise SqlError(body.decode())
        return body

    def evaluate(self, df: pd.DataFrame, expressions: dict[str, str]) -> dict[str, np.ndarray]:
        """Each expression over the rows of `df` as float64, NULL as a masked value (np.ma)."""
        body = self._ask(("eval", df, expressions), self.limits.wall_seconds(len(df)), f" on {len(df)} rows")
        table = pa.ipc.open_stream(body).read_all()
        out = {}
        for name in expressions:
            column = table.column(name)
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # NULL reads as NaN here ...
            nulls = column.is_null().to_numpy(zero_copy_only=False)
            out[name] = np.ma.MaskedArray(values, nulls) if nulls.any() else values  # ... and is masked
        return out

    def query(self, sql: str, max_rows: int) -> tuple[list[str], list[tuple]]:
        """The columns and at most max_rows + 1 rows of a read-only query over the worker's database (the
        caller checks it is a single SELECT: the child's read-only connection is what keeps it one)."""
        body = self._ask(("query", sql, max_rows), self.limits.seconds, "", MAX_ANSWER)
        table = pa.ipc.open_stream(body).read_all()
        return table.column_names, list(zip(*(c.to_pylist() for c in table.columns)))

    def _ended(self) -> str:
        """How the child ended (bubblewrap reports a signal as 128 + its number), before close() kills it."""
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            return "its pipe closed"
        return f"signal {-code}" if code < 0 else f"signal {code - 128}" if code > 128 else f"exit code {code}"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in (self._send, self._recv):
            conn.close()
        self._child.stop()


def _serve(limits: SqlLimits, database: str | None, recv: Connection, send: Connection) -> None:
    """The child: limits first, then one reply per request until the parent closes the pipe."""
    from cambrian.trainer.sandbox import SandboxUnavailable, apply_limits, load_filter

    apply_limits(as_mb=limits.memory_mb)
    try:  # the sandbox's seccomp filter (bubblewrap loaded it too where it runs: filters only add up)
        load_filter()
    except SandboxUnavailable as exc:  # no libseccomp here: DuckDB's own settings and the limits remain
        print(f"sql worker: {exc}; running without the seccomp filter", file=sys.stderr)
    import duckdb

    double = duckdb.sqltypes.DOUBLE if hasattr(duckdb, "sqltypes") else duckdb.typing.DOUBLE
    if database is None:
        con = duckdb.connect(config=limits.duckdb_config())
    else:
        con = duckdb.connect(database, read_only=True, config=limits.duckdb_config())
    send.send_bytes(b"rd")  # started: the parent's time limit runs from its first request
    while True:
        try:
            request = recv.recv()
        except EOFError:
            return
        try:
            if request[0] == "eval":  # ("eval", rows, {name: expression})
                # each expression is bound as an expression object of a projection, never pasted into a statement
                table = con.from_df(request[1]).select(*(duckdb.SQLExpression(sql).cast(double).alias(name)
                                                         for name, sql in request[2].items())).to_arrow_table()
            else:  # an analysis query, checked to be one SELECT by the parent; the connection can only read
                _, sql, max_rows = request
                table = con.sql(f"SELECT * FROM ({sql}) AS q LIMIT {int(max_rows) + 1}").to_arrow_table()
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            reply = b"ok" + sink.getvalue().to_pybytes()
        except (MemoryError, duckdb.OutOfMemoryException) as exc:
            reply = b"mm" + str(exc).splitlines()[0].encode()[:300]
        except Exception as exc:  # noqa: BLE001 - DuckDB's message goes back to say what the SQL did wrong
            reply = b"er" + (str(exc).splitlines() or [type(exc).__name__])[0].encode()[:500]
        request = table = None  # the rows go before the next request comes
        send.send_bytes(reply)


if __name__ == "__main__":
    out = os.dup(1)
    os.dup2(2, 1)  # stdout is the reply pipe: anything printed goes to stderr
    _serve(SqlLimits(**json.loads(sys.argv[1])), sys.argv[2] if len(sys.argv) > 2 else None,
           Connection(0, writable=False), Connection(out, readable=False))
