"""Reward, label and proxy SQL is evaluated by a child process in the candidate trainer's sandbox
(trainer/sqlworker.py with trainer/sandbox.py): these tests look at that child from outside, through the
operating system's own view of it (/proc), not through what DuckDB's settings let the SQL do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from cambrian.sqllimits import SqlLimitExceeded
from cambrian.testing.sqlchild import evaluator, shared_namespaces
from cambrian.trainer import sqlworker
from cambrian.trainer.sqlworker import SqlWorker

# about 2.4 s of CPU a row (test_sql_limits.py)
SLOW = "1 + 0 * levenshtein(repeat('a', CAST(click AS BIGINT) * 20000), repeat('b', CAST(click AS BIGINT) * 20000))"
ONE = pd.DataFrame({"click": [1.0]})


def _gone(pids: list[int], seconds: float) -> list[int]:
    """Those of `pids` still running after `seconds` (a zombie counts as gone)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_the_sql_child_has_namespaces_of_its_own_and_sees_only_the_runtime(tmp_path, monkeypatch):
    """Its net, mount, PID, user, IPC and UTS namespaces are not ours; its network has only a loopback; its root
    holds the Python runtime but no file of the host outside it (a secret beside the test, /etc/passwd, the
    checkout), /input is empty and read-only, and its environment is not ours."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for SQL")
    monkeypatch.setenv("CAMBRIAN_TEST_SECRET", "key-123")
    w = SqlWorker()
    try:
        assert w.evaluate(ONE, {"y": "click"})["y"].tolist() == [1.0]
        child = evaluator(w)
        assert shared_namespaces(child.pid) == []
        lines = Path(f"/proc/{child.pid}/net/dev").read_text().splitlines()[2:]
        assert [line.split(":")[0].strip() for line in lines] == ["lo"]
        root = Path(f"/proc/{child.pid}/root")
        assert (root / str(Path(sys.executable).resolve()).lstrip("/")).is_file()  # the runtime, read-only
        for hidden in (secret, Path("/etc/passwd"), Path(__file__), Path(__file__).parents[2] / "README.md"):
            assert hidden.exists() and not os.path.lexists(root / str(hidden).lstrip("/")), hidden
        assert os.listdir(root / "input") == []
        mounts = {line.split()[4]: line.split()[5] for line in Path(f"/proc/{child.pid}/mountinfo").read_text().splitlines()}
        assert mounts["/input"].startswith("ro") and mounts["/usr"].startswith("ro")
        assert b"key-123" not in Path(f"/proc/{child.pid}/environ").read_bytes()
        assert "Seccomp:\t2" in Path(f"/proc/{child.pid}/status").read_text()  # the sandbox's filter is loaded
    finally:
        w.close()


def test_a_hung_sql_child_has_its_whole_tree_killed_at_the_time_limit(monkeypatch):
    monkeypatch.setenv("CAMBRIAN_SQL_SECONDS", "1")
    monkeypatch.setenv("CAMBRIAN_SQL_ROW_SECONDS", "0")
    w = SqlWorker()
    w.evaluate(ONE, {"y": "click"})
    child = evaluator(w)
    assert "pid" not in shared_namespaces(child.pid)  # the kernel ends its PID namespace whole
    tree = [w._proc.pid, *(p.pid for p in psutil.Process(w._proc.pid).children(recursive=True))]
    assert child.pid in tree and len(tree) >= 3  # bubblewrap, the namespace's init, the evaluator
    with pytest.raises(SqlLimitExceeded, match="time limit of 1 s"):
        w.evaluate(pd.DataFrame({"click": [1.0] * 20}), {"y": SLOW})
    assert _gone(tree, 5) == []


PARENT = r"""
import os, signal, sys, threading, time
import pandas as pd
from cambrian.trainer.sqlworker import SqlWorker
w = SqlWorker()
w.evaluate(pd.DataFrame({"click": [1.0]}), {"y": "click"})
threading.Thread(target=w.evaluate, args=(pd.DataFrame({"click": [1.0] * 50}), {"y": sys.argv[1]}), daemon=True).start()
print(w._proc.pid, flush=True)
time.sleep(1.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_hung_sql_child_dies_with_its_trusted_parent(tmp_path):
    """A trusted process killed while its SQL child spins (2 minutes of work) leaves no process of it behind (its
    private folder stays: TMPDIR puts it in the test's)."""
    parent = subprocess.Popen([sys.executable, "-P", "-c", PARENT, SLOW], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
    tree: list[int] = []
    try:
        top = psutil.Process(int(parent.stdout.readline()))
        tree = [top.pid, *(p.pid for p in top.children(recursive=True))]
        assert parent.wait(30) == -9
        assert _gone(tree, 10) == []
    finally:
        for pid in _gone(tree, 0):  # what this test started, only where it failed
            os.kill(pid, 9)


def test_the_warm_slots_spare_is_started_contained(monkeypatch):
    monkeypatch.setattr(sqlworker, "_spare", None)
    monkeypatch.setattr(sqlworker, "_keep_spare", False)
    sqlworker.keep_a_spare()
    try:
        spare = sqlworker._spare.proc
        w = SqlWorker()
        assert w._proc is spare
        assert w.evaluate(ONE, {"y": "click * 3"})["y"].tolist() == [3.0]
        assert shared_namespaces(evaluator(w).pid) == []
        w.close()
    finally:
        sqlworker._take("")


FALLBACK = r"""
import pandas as pd
from cambrian.trainer.sqlworker import SqlWorker
w = SqlWorker()
print(w.evaluate(pd.DataFrame({"click": [2.0]}), {"y": "click"})["y"].tolist())
w.close()
"""


@pytest.mark.parametrize("policy,code,words", [
    ("auto", 0, "sql worker: not contained (bubblewrap (bwrap) is not installed"),
    ("bwrap", 1, "SandboxUnavailable: sandbox: bubblewrap (bwrap) is not installed"),
])
def test_without_bubblewrap_auto_falls_back_and_bwrap_refuses(tmp_path, policy, code, words):
    """As `cambrian train --sandbox auto|bwrap` does for a run without plugin code: `auto` evaluates with the
    child's seccomp filter and limits and says so once; `bwrap` fails closed."""
    bindir = tmp_path / "bin"
    bindir.mkdir()  # a PATH without bwrap
    env = {**os.environ, "PATH": str(bindir), "CAMBRIAN_SANDBOX": policy}
    proc = subprocess.run([sys.executable, "-P", "-c", FALLBACK], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == code and words in proc.stderr, proc.stderr
    if code == 0:
        assert proc.stdout.strip() == "[2.0]" and proc.stderr.count("not contained") == 1
