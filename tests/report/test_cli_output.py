"""Issue 20: command output through the real `cambrian` process (exit code, stdout, stderr)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

CAMBRIAN = str(Path(sys.executable).with_name("cambrian"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cambrian(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CAMBRIAN, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_journal_to_a_pipe_is_tab_separated_with_every_column(offline_only_run):
    r = cambrian("journal", str(offline_only_run))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = lines[0].split("\t")
    assert head[:6] == ["id", "persona", "cat", "phase", "verdict", "metric"], lines[0]
    rows = [dict(zip(head, line.split("\t"))) for line in lines[1:] if "\t" in line]
    assert all(len(line.split("\t")) == len(head) for line in lines[1:] if "\t" in line)
    scored = [row for row in rows if row["phase"] == "Scored" and row["id"] != "baseline"]
    assert len(scored) >= 10 and all(row["persona"] and row["verdict"] and row["score ± std (n)"] for row in scored)


def test_journal_on_an_80_column_terminal_keeps_every_column(offline_only_run):
    r = cambrian("journal", str(offline_only_run), env={"FORCE_COLOR": "1", "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    text = ANSI.sub("", r.stdout)
    assert max(len(line) for line in text.splitlines()) <= 80
    flat = " ".join(text.split())
    for hid in ("g001-01", "g002-01"):
        record = flat[flat.index(hid + " ·"):][:200]
        assert "persona " in record and "phase Scored" in record and "verdict " in record, record
