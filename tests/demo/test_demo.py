"""`cambrian demo` end to end on a tiny world: every stage, a report, and a resume that redoes nothing."""

import json
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.prometheus

ARGS = ["--fast", "--users", "300", "--days", "4", "--evaluations", "6", "--online-days", "3", "--json"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (scripts/ci-prepare-prometheus.sh)")
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "demo", "--out", str(out), *ARGS],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_runs_every_stage_and_writes_a_report(demo_run):
    out, summary = demo_run
    state = json.loads((out / "demo-state.json").read_text())
    assert {"world", "offline", "select", "report"} <= set(state)
    assert (out / "world" / "impressions.parquet").is_file()
    assert (out / "evolve" / "journal.jsonl").is_file()
    report = (out / "report" / "report.html").read_text()
    assert "<img" in report and summary["report"].endswith("report.html")
    if summary["tested_online"]:  # arms went live: a decision was reached and written back
        assert summary["online_outcome"] in {"promote", "rollback", "inconclusive", "continue"}
        assert (out / "evolve" / "rollouts" / "demo" / "result.json").is_file()
        journal = [json.loads(line) for line in (out / "evolve" / "journal.jsonl").read_text().splitlines()]
        assert any(e.get("fields", {}).get("phase") in ("Launched", "Retired") for e in journal if e.get("type") == "update")
        assert summary["champion"] == json.loads((out / "champion.json").read_text())["hypothesis"]


def test_demo_resumes_without_redoing_stages(demo_run):
    out, summary = demo_run
    journal_before = (out / "evolve" / "journal.jsonl").read_bytes()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "demo", "--out", str(out), *ARGS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary
    assert (out / "evolve" / "journal.jsonl").read_bytes() == journal_before
    assert time.monotonic() - started < 60


def test_demo_of_another_size_in_the_same_folder_is_refused(demo_run):
    out, _ = demo_run
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "demo", "--out", str(out), "--fast", "--users", "999"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "another size" in proc.stderr
