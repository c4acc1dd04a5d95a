"""`cambrian demo` end to end on a tiny world: the operator's core through the local platform, a kill in the
middle and a resume that retrains nothing, a report, and a re-run that redoes nothing."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from cambrian.demo import decision_applied
from cambrian.operator.localstore import LocalStore

# two demo runs (one killed) with an A/B rollout: minutes on a busy 2-core machine
pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(1500)]

# the baseline's 3 seeds, the 9 proposals of the first wake-up and 2 confirmation seeds for each of the two
# promising ones (on this world a reward change with a gain of about 20 noise floors: it goes live)
EVALUATIONS = 16
ARGS = ["--fast", "--users", "300", "--days", "4", "--evaluations", str(EVALUATIONS), "--online-days", "3", "--json"]


def _demo(out) -> list[str]:
    return [sys.executable, "-m", "cambrian.cli", "demo", "--out", str(out), *ARGS]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo killed (SIGKILL, like a crash) once its first training runs have finished, then run again."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (scripts/ci-prepare-prometheus.sh)")
    out = tmp_path_factory.mktemp("demo") / "run"
    jobs = out / "evolve" / "jobs"
    first = subprocess.Popen(_demo(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(list(jobs.glob("*/result.json"))) < 4 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    before = {p.parent.name: p.read_bytes() for p in jobs.glob("*/result.json")}
    first.kill()
    first.wait()
    proc = subprocess.run(_demo(out), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1]), before


def test_demo_drives_the_operator_core_and_writes_a_report(demo_run):
    out, summary, _ = demo_run
    state = json.loads((out / "demo-state.json").read_text())
    assert {"world", "evolve", "report"} <= set(state)
    assert (out / "world" / "impressions.parquet").is_file()
    assert not (out / "evolve" / "journal.jsonl").exists()  # not the old local engine
    store = LocalStore(out / "evolve")
    (evo,) = store.list("evolutions")
    st = evo["status"]
    assert evo["metadata"]["name"] == "demo" and st["phase"] == "BudgetExhausted"
    assert st["baselineMetrics"]["val_loss"]["seeds"] == 3  # the noise floor was measured
    assert st["spend"]["evaluations"] == EVALUATIONS
    hyps = {h["metadata"]["name"]: h["status"] for h in store.list("hypotheses")}
    assert len(hyps) >= 9 and all(s.get("phase") for s in hyps.values())
    assert summary["winners_offline"] == sorted(n for n, s in hyps.items() if s.get("verdict") == "better")
    # the champion is the Evolution's own decision
    assert summary["champion"] == (st["champion"].get("name") or "baseline")
    rollouts = store.list("rollouts")
    assert summary["tested_online"] == [t["hypothesisRef"]["name"] for r in sorted(
        rollouts, key=lambda r: r["metadata"]["creationTimestamp"]) for t in r["spec"]["treatments"]]
    assert summary["tested_online"] and set(summary["tested_online"]) <= set(summary["winners_offline"])  # only "better"
    for r in rollouts:  # each concluded and was applied by the Evolution
        assert r["status"]["phase"] in ("Promoted", "RolledBack", "Inconclusive")
        assert decision_applied(st, r)
        timeline = (out / "evolve" / "rollouts" / r["metadata"]["name"] / "timeline.jsonl").read_text()
        assert '"kind": "readout"' in timeline
    promoted = [r for r in rollouts if r["status"]["phase"] == "Promoted"]
    if promoted:
        assert summary["online_outcome"] == "promote" and st["champion"]["rollout"] in {r["metadata"]["name"] for r in promoted}
        assert hyps[summary["champion"]]["phase"] == "Launched"
    else:
        assert summary["online_outcome"] in ("rollback", "inconclusive") and summary["champion"] == "baseline"
    report = (out / "report" / "report.html").read_text()
    assert "<img" in report and summary["report"].endswith("report.html")
    assert 'src="effects_0_' in report and 'src="guardrails_0_' in report  # from the rollouts' timelines
    assert f"<td>Champion</td><td>{summary['champion']} — " in report


def test_a_killed_demo_resumes_without_retraining(demo_run):
    out, _, before = demo_run
    assert before, "the demo finished no training run before the kill"
    jobs = out / "evolve" / "jobs"
    for name, result in before.items():  # finished runs were not trained again
        assert (jobs / name / "result.json").read_bytes() == result
    # one job per training run the budget paid for: none was duplicated by the restart
    evo = LocalStore(out / "evolve").get("evolutions", "default", "demo")
    assert len(list(jobs.iterdir())) == evo["status"]["spend"]["evaluations"] == EVALUATIONS


def test_demo_resumes_without_redoing_stages(demo_run):
    out, summary, _ = demo_run
    objects = {p: p.read_bytes() for p in (out / "evolve" / "objects").rglob("*.yaml")}
    started = time.monotonic()
    proc = subprocess.run(_demo(out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary
    assert {p: p.read_bytes() for p in (out / "evolve" / "objects").rglob("*.yaml")} == objects
    assert time.monotonic() - started < 60


def test_demo_of_another_size_in_the_same_folder_is_refused(demo_run):
    out, _, _ = demo_run
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "demo", "--out", str(out), "--fast", "--users", "999"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "another size" in proc.stderr
