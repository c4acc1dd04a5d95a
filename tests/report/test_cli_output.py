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


def test_json_failure_goes_only_to_stdout_json(tmp_path):
    delta = tmp_path / "delta.yaml"
    delta.write_text("optimizer:\n  grad_clipp: 1\n")
    r = cambrian("gate", "--data", str(tmp_path), "--delta", str(delta), "--json")
    assert r.returncode == 2 and r.stderr == ""
    assert json.loads(r.stdout)["ok"] is False and "Extra inputs" in json.loads(r.stdout)["reason"]
    # A command without its own failure JSON: the error becomes the JSON.
    r = cambrian("journal", str(tmp_path / "missing"), "--json")
    assert r.returncode == 2 and r.stderr == ""
    assert json.loads(r.stdout) == {"ok": False, "error": f"{tmp_path / 'missing'}: no such directory",
                                    "hint": "name a run directory written by `cambrian evolve`", "exit_code": 2}
    r = cambrian("journal", str(tmp_path / "missing"))  # without --json: stderr as before
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error: ")


def test_report_counts_a_generation_whose_proposals_all_settled(tmp_path):
    """The operator's loop journals hypotheses without marking generations done."""
    from cambrian.agents.journal import Hypothesis, Journal, Score

    j = Journal(tmp_path / "run")
    j.add(Hypothesis(id="baseline", generation=0, persona="baseline", component="baseline", category="baseline",
                     origin="baseline", phase="Scored"))
    for i, phase in enumerate(["Scored", "Scored", "Failed", "Rejected"]):
        j.add(Hypothesis(id=f"g001-0{i + 1}", generation=1, persona="optimizer", component="optimizer",
                         category="exploit", origin="builtin", phase=phase,
                         offline={"val_loss": Score.of([0.5])} if phase == "Scored" else {}))
    j.add(Hypothesis(id="g002-01", generation=2, persona="optimizer", component="optimizer", category="exploit",
                     origin="builtin", phase="Training"))
    r = cambrian("report", str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "out" / "report.html").read_text()
    row = html[html.index("Generations done"):][:120]
    assert re.search(r"\b1 \(1\)", row), row  # generation 1 settled; generation 2 still training


def test_report_refuses_a_rollout_of_another_run(full_run, offline_only_run, tmp_path):
    other = full_run / "rollouts" / "sat-test"  # tests bundles under the other run's candidates/
    r = cambrian("report", str(offline_only_run), "--rollout", str(other), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(other) in lines[0] and str(offline_only_run) in lines[0], r.stderr
    assert "another run" in lines[0] and not (tmp_path / "out").exists()


def test_local_evolve_hypotheses_table_is_complete_off_a_terminal(capsys):
    from cambrian.operator.local_cli import print_hypotheses

    print_hypotheses([
        {"metadata": {"name": "fr-w1-0"}, "spec": {"origin": {"kind": "persona", "persona": "optimizer"}},
         "status": {"phase": "Scored", "offlineMetric": "val_loss", "offlineScore": 0.49454}},
        {"metadata": {"name": "fr-w1-1"}, "spec": {"origin": {"kind": "human"}},
         "status": {"phase": "Failed", "reason": "training failed:\tshape\nmismatch"}},
    ])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["hypothesis\tpersona\tphase\tmetric\tscore\twhy",
                     "fr-w1-0\toptimizer\tScored\tval_loss\t0.49454\t",
                     "fr-w1-1\thuman\tFailed\t\t\ttraining failed: shape mismatch"]
