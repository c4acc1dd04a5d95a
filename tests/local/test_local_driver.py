"""Local mode through the operator's loop: the file store, the driver over the LocalPlatform, the CLI.

Fast: the store's semantics, the CLI's refusal of the old formats, and the driver's loop with a stand-in
trainer (crashed mid-run and resumed in-process). Prometheus-marked: the seeded scenario end to end with
the real trainer, model servers, router, collector and Prometheus, the driver SIGKILLed twice (during a
candidate's training and during the rollout) and started again until done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cambrian.demo import decision_applied
from cambrian.errors import ConfigError
from cambrian.operator.local_driver import LocalDriver
from cambrian.operator.localstore import LocalStore, load_manifests
from cambrian.operator.platform.local import SIM_EPOCH, stop_leftovers
from cambrian.testing.waiting import running

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "tiny-evolution.yaml"
FAKE_TRAINER = [sys.executable, str(HERE / "fake_trainer.py")]


def _objects(root: Path, plural: str) -> list[dict]:
    return LocalStore(root).list(plural)


# ----------------------------------------------------------------------------------------------- store


def test_store_apply_creates_once_and_bumps_generation_on_spec_change(tmp_path):
    store = LocalStore(tmp_path)
    evo = load_manifests(SCENARIO)[0]
    assert store.apply(evo, SIM_EPOCH) == "created"
    first = store.get("evolutions", "default", "tiny")
    assert store.apply(evo, SIM_EPOCH) == "unchanged"
    changed = {**evo, "spec": {**evo["spec"], "topK": 2}}
    assert store.apply(changed, SIM_EPOCH) == "configured"
    again = store.get("evolutions", "default", "tiny")
    assert again["metadata"]["generation"] == 2 and again["metadata"]["uid"] == first["metadata"]["uid"]
    assert again["spec"]["topK"] == 2
    store.write_status("Evolution", "tiny", {"phase": "Running"})
    assert store.get("evolutions", "default", "tiny")["status"] == {"phase": "Running"}
    assert [p.name for p in (tmp_path / "objects" / "evolutions").iterdir()] == ["tiny.yaml"]  # no temp files left


def test_an_approval_the_core_removes_is_gone_from_the_local_object(tmp_path):
    """The Rollout core removes an approve=promote given before it awaited approval (Mark with value None); locally
    that is the store's annotate. Before, the store kept the key with a null value in the object's file."""
    from cambrian.operator.platform.local import LocalPlatform
    from cambrian.operator.reconcile.actions import A_APPROVE, Mark, Owner

    root = tmp_path / "run"
    store = LocalStore(root)
    store.create({"kind": "Rollout", "metadata": {"name": "ro", "annotations": {"keep": "me"}}, "spec": {}}, SIM_EPOCH)
    driver_approval = {A_APPROVE: "promote"}  # what LocalDriver.approve writes
    assert store.annotate("Rollout", "ro", driver_approval)
    p = LocalPlatform(root, store, lambda: SIM_EPOCH)
    try:
        p.mark(Mark("Rollout", "ro", Owner("Rollout", "ro", "uid"), A_APPROVE, None))
    finally:
        p.close()
    assert store.get("rollouts", "default", "ro")["metadata"]["annotations"] == {"keep": "me"}
    assert "approve" not in (root / "objects" / "rollouts" / "ro.yaml").read_text()


def test_store_parses_each_version_of_a_file_once_and_sees_every_other_writer(tmp_path, monkeypatch):
    import cambrian.operator.localstore as localstore

    parsed = []
    real_load = localstore.yaml.load
    monkeypatch.setattr(localstore.yaml, "load", lambda text, Loader: parsed.append(text) or real_load(text, Loader))
    store, other = LocalStore(tmp_path), LocalStore(tmp_path)  # `other`: another process's writes
    store.apply(load_manifests(SCENARIO)[0], SIM_EPOCH)
    parsed.clear()
    for _ in range(5):
        assert store.get("evolutions", "default", "tiny")["spec"]["topK"] != 7
        assert len(store.list("evolutions")) == 1
    assert len(parsed) == 1  # one version of one file: parsed once
    mine = store.get("evolutions", "default", "tiny")
    mine["spec"]["topK"] = 99  # a caller's copy: changing it changes nothing stored
    assert store.get("evolutions", "default", "tiny")["spec"]["topK"] != 99
    other.write_status("Evolution", "tiny", {"phase": "Running"})
    assert store.get("evolutions", "default", "tiny")["status"] == {"phase": "Running"}
    assert [o["status"] for o in store.list("evolutions")] == [{"phase": "Running"}]
    (tmp_path / "objects" / "evolutions" / "tiny.yaml").unlink()
    assert store.get("evolutions", "default", "tiny") is None and store.list("evolutions") == []

def test_old_formats_are_refused_with_a_pointer_to_the_crd_format(tmp_path):
    old = tmp_path / "evolve.yaml"
    old.write_text(yaml.safe_dump({"data_dir": "w", "generations": 2}))
    with pytest.raises(ConfigError) as exc:
        load_manifests(old)
    assert "old `cambrian evolve --config` format" in exc.value.hint
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "-f", str(old), "--dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "evolution.yaml" in proc.stderr


def test_rollout_command_refuses_other_kinds(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "rollout", "-f", str(SCENARIO), "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expected Rollout objects, found Evolution tiny" in proc.stderr


def test_example_rollout_on_an_empty_folder_names_the_missing_bundle(tmp_path):
    example = HERE.parents[1] / "manifests" / "examples" / "rollout.yaml"
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "rollout", "-f", str(example), "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "arm control: bundle pvc://cambrian-bundles/bundles/feed-ranker/baseline/bundle is not on this machine" \
        in proc.stderr and f"{tmp_path}/volumes/cambrian-bundles/bundles/feed-ranker/baseline/bundle" in proc.stderr
    assert not (tmp_path / "objects").exists()  # nothing was stored or started


def test_world_overrides_are_validated_like_the_file():
    from cambrian.operator.local_cli import apply_overrides

    evo = load_manifests(SCENARIO)
    out = apply_overrides(evo, users=120, days=3, seed=None, evaluations=5)
    assert out[0]["spec"]["data"] == {"world": {"users": 120, "days": 3, "seed": 3}}
    assert out[0]["spec"]["agent"]["budgets"]["evaluations"] == 5
    assert evo[0]["spec"]["data"]["world"]["users"] == 300  # the loaded objects are not changed


# ----------------------------------------------------------------------------------------------- driver


class Crash(Exception):
    pass


def test_driver_resumes_after_a_crash_without_duplicating_children(tmp_path):
    """Stand-in trainer; the driver dies after the first wake-up created its Hypotheses but before the
    Evolution's status (wakeups=1) was written, then a new driver on the same folder replays that step and
    finishes: the wake-up is not proposed twice and each Hypothesis trains once."""
    from cambrian.operator.local_cli import apply_overrides

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    objs = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=4)
    # exactly the two proposals a wake-up names (`yield` would keep one run for a confirmation seed)
    objs[0]["spec"]["agent"]["scheduling"] = {"policy": "fixed"}
    first = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1)
    write_status = first.store.write_status

    def crash_before_persisting(kind, name, status):
        if kind == "Evolution" and first.store.list("hypotheses"):
            raise Crash()
        write_status(kind, name, status)

    first.store.write_status = crash_before_persisting
    first.apply(objs)
    with pytest.raises(Crash):
        first.run()
    assert len(_objects(root, "hypotheses")) == 2
    assert "wakeups" not in (_objects(root, "evolutions")[0].get("status") or {}).get("counters", {})

    second = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1)
    summary = second.run()
    assert summary.reason.startswith("every Evolution is done"), summary
    hyps = _objects(root, "hypotheses")
    assert len(hyps) == 2  # the replayed wake-up found its Hypotheses and asked nobody again
    for h in hyps:
        assert h["status"]["phase"] == "Scored" and h["status"]["attempts"] == 1
        assert h["status"]["offlineScore"] == pytest.approx(0.9)
    jobs = sorted(p.name for p in (root / "jobs").iterdir())
    assert len(jobs) == 4  # two baseline seeds + two candidates, each exactly once
    evo = _objects(root, "evolutions")[0]["status"]
    assert evo["phase"] == "BudgetExhausted" and evo["counters"]["wakeups"] == 1
    assert evo["champion"]["bundle"].startswith("file://") and not _objects(root, "rollouts")
    bundle = Path(evo["champion"]["bundle"][len("file://"):])
    assert (bundle / "bundle.json").is_file()  # the bundle lives in the run folder, not in the job's scratch space
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e["kind"] == "Evolution"].count("Proposed") == 1


def test_a_stalled_evolution_without_reviews_ends_the_run_too(tmp_path):
    """The old evolve.yaml format runs an Evolution that never reviews (cadence.online NO_REVIEW): a failing
    provider ended such a run only at the simulated-time limit (60 days of backed-off wake-ups: 8.5 minutes for
    the API-key test), because the driver waited for a review that never comes."""
    from cambrian.operator.local_cli import apply_overrides, exit_code
    from cambrian.operator.local_driver import GIVE_UP_AFTER_EMPTY_WAKEUPS, NO_REVIEW
    from cambrian.operator.proposing import ProposalBatch

    from cambrian.operator.proposing import hypothesis_spec

    calls = []

    def once_then_failing(action, existing):  # one Hypothesis, scored after the Evolution's only review; then 500s
        calls.append(action.wakeup)
        if action.wakeup > 1:
            return ProposalBatch(notes=["gemini: HTTP 500 (after 3 attempts)"])
        lr = {"component": "optimizer", "patch": {"lr": 0.002}}
        return ProposalBatch(items=[(hypothesis_spec(action.owner.name, 1, "optimizer", {"delta": lr}), {})])

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1, proposer=once_then_failing)
    objs = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=10)
    objs[0]["spec"]["cadence"]["online"] = NO_REVIEW
    driver.apply(objs)
    summary = driver.run()
    assert summary.stalled == ["tiny"] and exit_code(summary) == 1 and "wake-ups created no Hypothesis" in summary.reason
    assert calls == list(range(1, GIVE_UP_AFTER_EMPTY_WAKEUPS + 2)) and summary.days < 7
    assert [h["status"]["phase"] for h in _objects(root, "hypotheses")] == ["Scored"]


def test_a_proposer_that_never_proposes_is_backed_off_and_ends_a_local_run(tmp_path):
    """An endpoint that fails every time (here: a proposer whose every answer is unusable) is asked after 1, 2,
    4, ... cadences instead of every cadence until max_days (60 days of 1h wake-ups: 1,440 calls), and a local
    run with nothing else to do ends after GIVE_UP_AFTER_EMPTY_WAKEUPS of them, saying why."""
    from cambrian.operator.local_cli import apply_overrides, exit_code
    from cambrian.operator.local_driver import GIVE_UP_AFTER_EMPTY_WAKEUPS
    from cambrian.operator.proposing import ProposalBatch

    calls = []

    def failing(action, existing):
        calls.append(action.wakeup)
        return ProposalBatch(notes=["gemini: HTTP 500 (after 3 attempts)"])

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1, proposer=failing)
    driver.apply(apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=10))
    summary = driver.run()
    assert "wake-ups created no Hypothesis" in summary.reason, summary
    assert summary.stalled == ["tiny"] and exit_code(summary) == 1  # `cambrian evolve` exits 1, not success
    assert calls == list(range(1, GIVE_UP_AFTER_EMPTY_WAKEUPS + 1))
    # 1h cadence: wake-ups at 0, 2, 6, 14, 30, 62 hours, and the sixth's outcome read an hour later
    assert summary.days == pytest.approx(63 / 24, abs=0.05)
    evo = _objects(root, "evolutions")[0]["status"]
    assert evo["phase"] == "Running" and evo["counters"]["emptyWakeups"] == GIVE_UP_AFTER_EMPTY_WAKEUPS
    assert next(c for c in evo["conditions"] if c["type"] == "Proposing")["status"] == "False"
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    assert [e["data"]["streak"] for e in events if e["event"] == "WakeupsBackedOff"] == list(
        range(1, GIVE_UP_AFTER_EMPTY_WAKEUPS + 1))
    assert not _objects(root, "hypotheses") and len(list((root / "jobs").iterdir())) == 2  # the baseline's seeds only

    # the same command again, the provider fixed (a key in the environment: no spec change): it is asked again,
    # after the backed-off wait of simulated time, and its Hypotheses train
    from cambrian.operator.proposing import hypothesis_spec

    def fixed(action, existing):
        calls.append(action.wakeup)
        lr = {"component": "optimizer", "patch": {"lr": 0.002}}
        return ProposalBatch(items=[(hypothesis_spec(action.owner.name, action.wakeup, "optimizer", {"delta": lr}), {})])

    again = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1, proposer=fixed)
    summary = again.run()
    assert "wake-ups created no Hypothesis" not in summary.reason and exit_code(summary) == 0
    assert calls[GIVE_UP_AFTER_EMPTY_WAKEUPS] == GIVE_UP_AFTER_EMPTY_WAKEUPS + 1
    assert [h["status"]["phase"] for h in _objects(root, "hypotheses")][:1] == ["Scored"]
    assert _objects(root, "evolutions")[0]["status"]["counters"]["emptyWakeups"] == 0


@pytest.mark.parametrize("policy", ["fixed", "yield"])
def test_the_evaluation_budget_is_never_overshot_by_one_wake_up(tmp_path, policy):
    """Room for one more evaluation after the baseline's two seeds. `fixed` asks for two proposals: the Evolution
    counts the first training run before the second Hypothesis asks, so exactly one trains and the other waits,
    Validated. `yield` asks for no more than the budget can train: one."""
    from cambrian.operator.local_cli import apply_overrides

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1)
    objs = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=3)
    objs[0]["spec"]["agent"]["scheduling"] = {"policy": policy}
    driver.apply(objs)
    assert driver.run().reason.startswith("every Evolution is done")
    phases = sorted(h["status"]["phase"] for h in _objects(root, "hypotheses"))
    assert phases == (["Scored", "Validated"] if policy == "fixed" else ["Scored"])
    assert len(list((root / "jobs").iterdir())) == 3  # the baseline's two seeds and one candidate
    assert _objects(root, "evolutions")[0]["status"]["spend"]["evaluations"] == 3


def test_deleting_finished_hypotheses_gives_no_budget_back(tmp_path):
    """The evaluations budget (4) is spent: the baseline's two seeds and two candidates. The user deletes the
    finished Hypotheses and runs the driver again: the Evolution still counts their runs and trains nothing more.
    Before, its spend was summed from the Hypotheses that existed: it fell back to 2, and the next wake-up proposed
    and trained two more (six runs under a budget of four)."""
    from cambrian.operator.local_cli import apply_overrides
    from cambrian.operator.reconcile.actions import A_SPEND_COUNTED

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    objs = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=4)
    objs[0]["spec"]["agent"]["scheduling"] = {"policy": "fixed"}
    driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1)
    driver.apply(objs)
    assert driver.run().reason.startswith("every Evolution is done")
    hyps = _objects(root, "hypotheses")
    assert sorted(h["status"]["phase"] for h in hyps) == ["Scored", "Scored"]
    assert all(A_SPEND_COUNTED in h["metadata"]["annotations"] for h in hyps)  # the ledger holds their spend
    for path in (root / "objects" / "hypotheses").iterdir():
        path.unlink()  # what `kubectl delete hypotheses --all` is in the cluster
    again = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1)
    assert again.run().reason.startswith("every Evolution is done")
    evo = _objects(root, "evolutions")[0]["status"]
    assert evo["phase"] == "BudgetExhausted" and evo["spend"]["evaluations"] == 4
    assert not _objects(root, "hypotheses") and len(list((root / "jobs").iterdir())) == 4


@pytest.mark.parametrize("runs_end_during_the_pass", [False, True])
def test_the_next_wake_up_asks_the_persona_with_the_better_yield_for_more(tmp_path, runs_end_during_the_pass):
    """Optimizer changes gain 1e-3 (10 noise floors, confirmed: 5 per evaluation), architecture changes lose.
    Wake-up 1 splits its four proposals equally, personas interleaved; wake-up 2 gives the optimizer persona
    three and the architecture persona its exploration floor of one, trained optimizer first. The same when
    every pass lasts until the training in flight has ended (as on a loaded machine): the clock waits for the
    next pass to read those results."""
    from cambrian.operator.local_cli import apply_overrides
    from cambrian.operator.local_driver import NO_REVIEW

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    gains = ["--component-gain", "optimizer=0.001", "--component-gain", "training=0.001"]
    driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER + gains, poll_s=0.1, max_days=1)
    if runs_end_during_the_pass:
        one_pass = driver.reconcile_once

        def slow_pass() -> bool:  # a pass that finds training in flight and nothing to do lasts until it ends
            in_flight = driver.platform.busy()
            progressed = one_pass()
            while in_flight and not progressed and driver.platform.busy():
                time.sleep(0.05)
            return progressed
        driver.reconcile_once = slow_pass
    # 2 baseline seeds, 4 first runs and 2 confirmations, then 4 proposals and the confirmation seed kept for them
    objs = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=13)
    objs[0]["spec"]["agent"]["personas"] = ["optimizer", "architecture"]
    objs[0]["spec"]["cadence"]["online"] = NO_REVIEW  # nothing is served: the stand-in's bundles cannot be
    driver.apply(objs)
    driver.run()  # until the simulated-time limit: with no review due, the Evolution is never "done"
    assert _objects(root, "evolutions")[0]["status"]["phase"] == "BudgetExhausted"
    hyps = sorted(_objects(root, "hypotheses"), key=lambda h: h["metadata"]["name"])
    by_wakeup = {w: [h["spec"]["origin"]["persona"] for h in hyps if h["spec"]["origin"]["wakeup"] == w] for w in (1, 2)}
    assert by_wakeup == {1: ["optimizer", "architecture", "optimizer", "architecture"],
                         2: ["optimizer", "architecture", "optimizer", "optimizer"]}
    evo = _objects(root, "evolutions")[0]["status"]
    assert [(s["persona"], s["proposals"]) for s in evo["personaSchedule"]] == [("optimizer", 3), ("architecture", 1)]
    # both optimizer hypotheses were judged with their confirmation by wake-up 2 (2 was once seen on a loaded
    # machine: a run that ended during the driver's last pass let the clock move before its result was read)
    assert evo["personaSchedule"][0]["evaluations"] == 4 and evo["personaSchedule"][1]["evaluations"] == 2
    assert evo["personaSchedule"][0]["yieldPerEvaluation"] == pytest.approx(5.0)
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    scheduled = [e["message"] for e in events if e["event"] == "PersonasScheduled"]
    assert len(scheduled) == 2 and "equal split" in scheduled[0] and "optimizer 3" in scheduled[1]


def test_a_second_evolution_on_the_same_data_reuses_the_baselines_seed_runs(tmp_path):
    """The noise floor's seeds are trained once per (data, baseline Φ and seed, training settings, trainer): a
    second Evolution in the same folder gets the first one's runs (metrics and bundle) without training; one
    with another baseline, or after the data changed, trains its own."""
    from cambrian.operator.local_cli import apply_overrides

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    (data / "world.json").write_text("{}")
    base = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=2)[0]  # the baseline only

    def evolution(name, lr=None):
        obj = json.loads(json.dumps(base))
        obj["metadata"]["name"] = name
        if lr is not None:
            obj["spec"]["baseline"]["optimizer"]["lr"] = lr
        return obj

    def drive(obj):
        driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER, poll_s=0.1)
        driver.apply([obj])
        driver.run()
        st = next(e for e in _objects(root, "evolutions") if e["metadata"]["name"] == obj["metadata"]["name"])["status"]
        jobs = [json.loads((j / "result.json").read_text()) for j in (root / "jobs").iterdir()
                if json.loads((j / "job.json").read_text())["owner"]["name"] == obj["metadata"]["name"]]
        assert len(jobs) == 2 and st["champion"].get("bundle"), (st, jobs)
        assert (Path(st["champion"]["bundle"][len("file://"):]) / "bundle.json").is_file()
        return st, [j.get("reused") for j in jobs]

    first, reused = drive(evolution("first"))
    assert reused == [None, None] and len(list((root / "runstore").iterdir())) == 2
    second, reused = drive(evolution("second"))
    assert all(reused) and second["baselineMetrics"] == first["baselineMetrics"]
    # the Evolution's status says which seeds were taken from the run store (the reconcile core, both platforms)
    assert sorted(r["reused"] for r in second["baselineRuns"]) == sorted(reused)
    assert not any(r.get("reused") for r in first["baselineRuns"])
    assert second["champion"]["bundle"] != first["champion"]["bundle"]  # its own copy
    _, reused = drive(evolution("other", lr=0.001))
    assert reused == [None, None]
    (data / "world.json").write_text('{"changed": true}')
    _, reused = drive(evolution("newdata"))
    assert reused == [None, None] and len(list((root / "runstore").iterdir())) == 6


def _drive(tmp_path, trainer_args: list[str], evaluations: int):
    from cambrian.operator.local_cli import apply_overrides

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER + trainer_args, poll_s=0.1)
    driver.apply(apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=evaluations))
    summary = driver.run()
    assert summary.reason.startswith("every Evolution is done"), summary
    return root


def test_a_gain_below_the_noise_floor_is_never_better_nor_rolled_out(tmp_path):
    """Candidates 1e-9 better than a baseline whose two seeds agree: the floor is minFloor, not 0, so both
    are Scored not_better, nothing is confirmed and no Rollout starts, however many reviews pass."""
    root = _drive(tmp_path, ["--gain", "1e-9"], evaluations=4)
    evo = _objects(root, "evolutions")[0]["status"]
    assert evo["baselineMetrics"]["val_loss"] == {"value": 0.5, "std": 0.0, "stderr": 0.0, "seeds": 2}
    assert evo["counters"]["reviews"] >= 1
    for h in _objects(root, "hypotheses"):
        st = h["status"]
        assert st["phase"] == "Scored" and st["verdict"] == "not_better" and st["confirmations"] == 0
        assert st["gain"] == pytest.approx(1e-9) and st["noiseFloor"] == pytest.approx(1e-4)
    assert not _objects(root, "rollouts") and len(list((root / "jobs").iterdir())) == 4


def test_promising_candidates_train_confirmation_seeds_before_any_verdict(tmp_path):
    """A first seed 0.1 better is promising; its confirmation seed (1000) scores like the baseline, so over two
    seeds the gain (0.05) no longer clears the floor: not better, no rollout. Each confirmation trains once."""
    root = _drive(tmp_path, ["--gain", "0.1", "--confirm-gain", "0"], evaluations=6)
    hyps = _objects(root, "hypotheses")
    assert len(hyps) == 2
    for h in hyps:
        st = h["status"]
        assert st["phase"] == "Scored" and st["verdict"] == "not_better" and st["confirmations"] == 1
        assert [r["seed"] for r in st["seedRuns"]] == [0, 1000] and st["proxyMetrics"]["val_loss"]["seeds"] == 2
        assert st["offlineScore"] == pytest.approx(0.45)
    confirm = [j for j in (root / "jobs").iterdir()
               if json.loads((j / "job.json").read_text())["baseline"].get("training", {}).get("seed") == 1000]
    assert len(confirm) == 2 and len(list((root / "jobs").iterdir())) == 6
    assert not _objects(root, "rollouts")
    assert _objects(root, "evolutions")[0]["status"]["spend"]["evaluations"] == 6


def test_failed_candidates_go_back_to_the_proposer_once(tmp_path):
    """Every candidate fails in training; the next wake-up sends each failure (with its error) back to the
    built-in proposer once; a repair that fails too is not repaired again."""
    root = _drive(tmp_path, ["--fail"], evaluations=8)
    hyps = {h["metadata"]["name"]: h for h in _objects(root, "hypotheses")}
    assert all(h["status"]["phase"] == "Failed" and h["status"]["failureStage"] == "training" for h in hyps.values()), \
        {n: (h["spec"]["origin"], h["status"].get("phase"), h["status"].get("reason")) for n, h in hyps.items()}
    repaired = [h["spec"]["origin"]["repairOf"] for h in hyps.values() if h["spec"]["origin"].get("repairOf")]
    assert repaired and len(repaired) == len(set(repaired))  # at most once each
    assert all(r in hyps and not hyps[r]["spec"]["origin"].get("repairOf") for r in repaired)  # never a repair's repair
    first_wakeup = {n for n, h in hyps.items() if h["spec"]["origin"].get("wakeup") == 1}
    # asked, with or without a fix: marked on the failed Hypothesis (its name left status.repairs once marked)
    marked = {n for n, h in hyps.items() if (h["metadata"].get("annotations") or {}).get("cambrian.dev/repair-asked")}
    assert first_wakeup <= marked | set(_objects(root, "evolutions")[0]["status"]["repairs"])
    assert marked and not marked & set(_objects(root, "evolutions")[0]["status"]["repairs"])


def test_a_training_run_cut_off_by_a_restart_runs_again_under_its_name(tmp_path):
    """A job folder with a request and no result (the driver died while it trained) is re-run by recover()."""
    from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner
    from cambrian.operator.platform.local import LocalPlatform

    root = tmp_path / "run"
    owner = Owner("Hypothesis", "h", "uid-1", "default")
    action = CreateTrainingJob(name="h-train-1-abc", owner=owner, hypothesis="h", attempt=1, baseline={},
                               delta={"component": "optimizer", "patch": {"lr": 0.01}}, bundle_path="bundles/h/attempt-1")
    (tmp_path / "data").mkdir()
    p = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, data_dir=tmp_path / "data", train_command=FAKE_TRAINER)
    p.submit_training_job(action)
    while p.busy():
        time.sleep(0.05)
    (root / "jobs" / action.name / "result.json").unlink()  # as if the driver had been killed mid-run
    p2 = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, data_dir=tmp_path / "data", train_command=FAKE_TRAINER)
    assert [j.state for j in p2.training_jobs(owner)] == ["Running"]
    p2.recover()
    while p2.busy():
        time.sleep(0.05)
    (job,) = p2.training_jobs(owner)
    assert job.state == "Succeeded" and job.metrics["val_loss"] == 0.9
    assert job.bundle_uri == f"file://{root.resolve()}/volumes/_local/bundles/h/attempt-1/bundle"
    p2.submit_training_job(action)  # idempotent by name: nothing new starts
    assert not p2.busy()
    p.close()
    p2.close()


def test_a_run_cut_off_by_every_restart_fails_after_the_restart_limit(tmp_path):
    """A run that never finishes because the driver dies each time it runs (as a candidate that exhausts the
    machine's memory would) is run again MAX_RESTARTS times, then fails as an infrastructure failure (exit
    code None: the reconcile core gives it a new attempt), instead of taking every later start down too."""
    from cambrian.operator.platform.local import MAX_RESTARTS, LocalPlatform
    from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner

    root = tmp_path / "run"
    owner = Owner("Hypothesis", "h", "uid-1", "default")
    action = CreateTrainingJob(name="h-train-1-abc", owner=owner, hypothesis="h", attempt=1, baseline={},
                               delta={"component": "optimizer", "patch": {"lr": 0.01}}, bundle_path="bundles/h/attempt-1")
    (tmp_path / "data").mkdir()
    result = root / "jobs" / action.name / "result.json"
    runs = 0
    for start in range(MAX_RESTARTS + 2):
        p = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, data_dir=tmp_path / "data", train_command=FAKE_TRAINER)
        p.recover() if start else p.submit_training_job(action)
        runs += p.busy()
        while p.busy():
            time.sleep(0.05)
        p.close()
        if start <= MAX_RESTARTS:
            assert json.loads(result.read_text())["state"] == "Succeeded"
            result.unlink()  # as if the driver had been killed mid-run, again
    assert runs == MAX_RESTARTS + 1  # the first run and MAX_RESTARTS re-runs; the last start ran nothing
    (job,) = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH).training_jobs(owner)
    assert (job.state, job.reason, job.exit_code) == ("Failed", "BackoffLimitExceeded", None)
    assert f"cut off by {MAX_RESTARTS + 1} restarts" in job.message


def test_close_waits_for_a_run_still_preparing_and_that_run_starts_nothing(tmp_path, monkeypatch):
    """A run whose thread is still before its trainer when close() is called (here: held while its data is
    found) starts no trainer, writes no result (recover() re-runs it), and close() returns only after that thread
    did: a driver started next on the same folder would otherwise run it a second time beside it."""
    import threading

    import cambrian.agents.runner as runner
    from cambrian.operator.platform.local import LocalPlatform
    from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner

    root = tmp_path / "run"
    (tmp_path / "data").mkdir()
    p = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, data_dir=tmp_path / "data", train_command=FAKE_TRAINER)
    entered, release = threading.Event(), threading.Event()
    found = p.data_for

    def held_data_for(*args):
        entered.set()
        release.wait(10)
        return found(*args)

    started = []
    monkeypatch.setattr(p, "data_for", held_data_for)
    monkeypatch.setattr(runner, "run_candidate", lambda *a, **kw: started.append(a))
    owner = Owner("Hypothesis", "h", "uid-1", "default")
    action = CreateTrainingJob(name="h-train-1-abc", owner=owner, hypothesis="h", attempt=1, baseline={},
                               delta={"component": "optimizer", "patch": {"lr": 0.01}}, bundle_path="bundles/h/attempt-1")
    p.submit_training_job(action)
    assert entered.wait(10)
    closer = threading.Thread(target=p.close)
    closer.start()
    time.sleep(0.5)
    assert closer.is_alive()  # close() waits for the thread it cannot stop by killing a child
    release.set()
    closer.join(10)
    assert not closer.is_alive() and not p.busy()
    assert started == [] and not (root / "jobs" / action.name / "result.json").exists()


@pytest.mark.parametrize("flag, warm", [([], True), (["--no-warm"], False), (["--warm"], True)])
def test_warm_slots_are_the_local_default_and_no_warm_turns_them_off(tmp_path, monkeypatch, flag, warm):
    """`cambrian evolve` runs warm worker slots unless told --no-warm; so does a LocalPlatform built without the
    setting, while a custom train command stays cold (the warm trainer runs only the built-in one)."""
    from typer.testing import CliRunner

    from cambrian.cli import app
    from cambrian.operator import local_cli
    from cambrian.operator.platform.local import LocalPlatform

    seen = {}
    monkeypatch.setattr(local_cli, "run_local", lambda *a, **kw: seen.update(kw) or 0)
    res = CliRunner().invoke(app, ["evolve", "-f", str(SCENARIO), "--dir", str(tmp_path / "run"), *flag])
    assert res.exit_code == 0, res.output
    assert seen["warm"] is warm
    root = tmp_path / "p"
    assert LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH).warm is True
    assert LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, train_command=FAKE_TRAINER).warm is False
    assert LocalDriver(root).platform.warm is True


class _Reached(Exception):
    """LocalDriver.run was called: the test has what it came for."""


@pytest.mark.parametrize("flag, zygote", [([], True), (["--no-zygote"], False), (["--zygote"], True)])
@pytest.mark.parametrize("command", ["evolve", "demo"])
def test_no_zygote_reaches_the_local_platform_from_evolve_and_demo(tmp_path, monkeypatch, command, flag, zygote):
    """`cambrian evolve` and `cambrian demo` fork warm slots' steps from a zygote unless told --no-zygote: the
    option reaches the driver's LocalPlatform (which hands it to each WarmWorker) as warm_zygote."""
    from typer.testing import CliRunner

    from cambrian import demo
    from cambrian.cli import app

    seen = {}

    def run(self):
        seen.update(warm=self.platform.warm, zygote=self.platform.warm_zygote)
        raise _Reached

    monkeypatch.setattr(LocalDriver, "run", run)
    monkeypatch.setattr(demo, "stage_world", lambda *a, **kw: str(tmp_path / "world"))  # no world generated
    args = (["evolve", "-f", str(SCENARIO), "--dir", str(tmp_path / "run")] if command == "evolve"
            else ["demo", "--fast", "--json", "--out", str(tmp_path / "demo")])
    res = CliRunner().invoke(app, [*args, *flag])
    assert isinstance(res.exception, _Reached), res.output
    assert seen == {"warm": True, "zygote": zygote}


# A short real training run: warm slots run only the built-in trainer.
WARM_JOB = {"name": "h-train-1-abc", "hypothesis": "h", "attempt": 1,
            "baseline": {"training": {"epochs": 2, "cpu_threads": 1, "batch_size": 256, "device": "cpu"}},
            "delta": {"component": "optimizer", "patch": {"lr": 0.01}}, "bundle_path": "bundles/h/attempt-1"}
WARM_DRIVER = """
import json, sys, time
from pathlib import Path
from cambrian.operator.localstore import LocalStore
from cambrian.operator.platform.local import SIM_EPOCH, LocalPlatform
from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner
root, data, job = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
p = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, data_dir=data)  # warm: the default
p.submit_training_job(CreateTrainingJob(owner=Owner("Hypothesis", "h", "uid-1", "default"), **job))
time.sleep(900)
"""


def _train_once(root: Path, data: Path, warm: bool, recover: bool = False):
    from cambrian.operator.platform.local import LocalPlatform
    from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner

    owner = Owner("Hypothesis", "h", "uid-1", "default")
    p = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, data_dir=data, warm=warm)
    try:
        p.recover() if recover else p.submit_training_job(CreateTrainingJob(owner=owner, **WARM_JOB))
        deadline = time.monotonic() + 600
        while p.busy() and time.monotonic() < deadline:
            time.sleep(0.2)
        (job,) = p.training_jobs(owner)
        return job
    finally:
        p.close()


def _command(p) -> str:
    import psutil

    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.slow
def test_a_warm_run_cut_off_by_a_killed_driver_dies_with_it_and_runs_again_once(tmp_path):
    """The driver SIGKILLed while its warm slot runs a candidate (the trainer sandbox handed out, no result yet):
    the slot's worker and every sandbox of it die with the driver, as a cold run's process does; the restarted
    driver runs the run again once, under its name, on a fresh warm worker in the dead one's folder,
    with the metrics of an uninterrupted run; `jobs/` holds that run only, and no process of either driver is
    left once it closed."""
    import psutil

    data = tmp_path / "world"
    subprocess.run([sys.executable, "-m", "cambrian.cli", "world", "generate", "--users", "300", "--days", "4",
                    "--seed", "3", "--easy", "--out", str(data)], check=True, capture_output=True, timeout=300)
    want = _train_once(tmp_path / "uninterrupted", data, warm=False)
    assert want.state == "Succeeded", want

    root = (tmp_path / "run").resolve()
    name = WARM_JOB["name"]
    proc = subprocess.Popen([sys.executable, "-c", WARM_DRIVER, str(root), str(data), json.dumps(WARM_JOB)],
                            stderr=subprocess.PIPE, text=True)
    handed_out = root / "warm" / "0" / "pool" / "training-1.log"  # opened by the step the zygote forked for it
    _wait(proc, "the warm slot's trainer step started", handed_out.exists, timeout=600)
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert any("cambrian.trainer.warm" in _command(p) for p in tree)  # the run is a warm slot's
    proc.kill()
    proc.wait()
    assert not (root / "jobs" / name / "result.json").exists()  # the kill cut the run off
    deadline = time.monotonic() + 15  # the parent-death signal is at once; reaping may lag under load
    while running(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(tree), [_command(p) for p in running(tree)]

    got = _train_once(root, data, warm=True, recover=True)
    assert got.state == "Succeeded", got
    same = ("val_loss", "auc", "long_watch_corr", "return_corr", "like_corr", "n_train", "n_val")
    # the same seed: the re-run gives an uninterrupted (cold) run's metrics (timings aside)
    assert {k: got.metrics[k] for k in same} == {k: want.metrics[k] for k in same}
    assert got.metrics["sandbox"] == "zygote" and want.metrics["sandbox"] == "bwrap"
    assert (root / "jobs" / name / "restarts").read_text().strip() == "1"  # run again once
    assert json.loads((root / "jobs" / name / "work" / "out" / "timing.json").read_text())["warm"] is True
    assert sorted(p.name for p in (root / "jobs").iterdir()) == [name]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["cmdline"]) if any(str(root) in a for a in p.info["cmdline"] or [])]
        if not running(left):
            break
        time.sleep(0.2)
    assert not running(left), [_command(p) for p in running(left)]


# ----------------------------------------------------------------------------------------------- end to end


def _wait(proc: subprocess.Popen, what: str, cond, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"driver exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _training_candidate(root: Path) -> bool:
    for job in (root / "jobs").glob("*/job.json"):
        if json.loads(job.read_text()).get("hypothesis") and not (job.parent / "result.json").exists() \
                and (job.parent / "work" / "train.log").exists():
            return True
    return False


def _routing(root: Path) -> bool:
    return any(root.glob("rollouts/*/services/router.port"))


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    """The seeded scenario through the real CLI, SIGKILLed once while a candidate trains and once while the
    rollout routes users, then run again until done. Returns the run folder and the last run's report."""
    root = tmp_path_factory.mktemp("evolve") / "run"
    cmd = [sys.executable, "-m", "cambrian.cli", "evolve", "-f", str(SCENARIO), "--dir", str(root), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        for what, cond in (("a candidate training", lambda: _training_candidate(root)),
                           ("users routed to the rollout", lambda: _routing(root))):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            _wait(proc, what, cond)
            os.kill(proc.pid, signal.SIGKILL)  # no clean-up: children keep running, status writes may be lost
            proc.wait()
        ro_at_kill = _objects(root, "rollouts")[0]["status"].get("phase")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        left = stop_leftovers(root.resolve())
    return root, json.loads(proc.stdout), ro_at_kill, left


@pytest.mark.prometheus
@pytest.mark.timeout(1500)  # three driver runs and six real training runs (baseline and confirmation seeds)
def test_seeded_evolution_survives_sigkill_during_training_and_rollout(evolved):
    root, report, ro_at_kill, left = evolved
    assert report["reason"].startswith("every Evolution is done"), report
    assert ro_at_kill in (None, "Pending", "Deploying", "Running")  # the second kill hit a live rollout
    assert left == []  # the last run stopped every process it (or the killed runs) started
    # and the temp folders of the processes the killed runs left behind went with them (they are inside the run folder)
    assert not [p for p in root.rglob("*") if p.is_dir() and (p.name == "tmp" or ".tmp-" in p.name)]
    hyps = _objects(root, "hypotheses")
    held = [h for h in hyps if h["status"]["phase"] == "Validated"]  # proposed after the budget was spent
    assert all(h["status"]["attempts"] == 0 for h in held)
    hyps = [h for h in hyps if h not in held]
    assert len(hyps) >= 2 and all(h["status"]["attempts"] == 1 for h in hyps)
    assert all(h["status"]["phase"] in ("Scored", "Live", "Launched", "Retired") for h in hyps)
    jobs = [json.loads(p.read_text()) for p in (root / "jobs").glob("*/result.json")]
    runs = 2 + len(hyps) + sum(h["status"]["confirmations"] for h in hyps)  # baseline seeds, attempts, confirmations
    assert len(jobs) == runs and all(j["state"] == "Succeeded" for j in jobs)  # the killed run ran again, once
    (live,) = [h for h in hyps if h["status"].get("rollout")]
    assert live["status"]["verdict"] == "better" and len(live["status"]["seedRuns"]) == 2  # confirmed before live
    (ro,) = _objects(root, "rollouts")  # one rollout, not one per restart
    assert ro["status"]["phase"] in ("Promoted", "RolledBack", "Inconclusive")
    assert ro["status"]["readouts"] >= 1 and ro["status"]["decision"] in ("promote", "rollback", "inconclusive")
    env_state = json.loads((root / "rollouts" / ro["metadata"]["name"] / "env.json").read_text())
    assert env_state["days_done"] >= 1
    evo = _objects(root, "evolutions")[0]["status"]
    assert decision_applied(evo, ro) and evo["lastDecision"]["rollout"] == ro["metadata"]["name"]


@pytest.mark.slow
@pytest.mark.prometheus
def test_rollout_command_runs_an_abn_rollout_of_the_trained_bundles(evolved, tmp_path):
    """`cambrian rollout -f` on the evolved folder: control and both candidates at a third each, real
    servers, router and Prometheus; every arm gets users in about its share and the rollout concludes."""
    root = evolved[0]
    evo = _objects(root, "evolutions")[0]["status"]
    hyps = {h["metadata"]["name"]: h["status"]["bundleUri"] for h in _objects(root, "hypotheses")
            if h["status"].get("bundleUri")}
    names = sorted(hyps)[:2]  # two trained candidates (a budget-held one has no bundle)
    rollout = {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "tiny-abn"},
        "spec": {"evolutionRef": {"name": "tiny"},
                 "control": {"name": "control", "bundle": evo["champion"]["bundle"]},
                 "treatments": [{"name": f"t{i}", "hypothesisRef": {"name": n}, "bundle": hyps[n]}
                                for i, n in enumerate(names)],
                 "salt": "tiny-abn",
                 "ramp": {"steps": [{"weights": [34, 33, 33], "duration": "1d"}]},
                 "metrics": {"northStar": [{"name": "watch_minutes"}], "readout": {"interval": "1d"}},
                 "statistics": {"minSamplePerArm": 50, "maxDuration": "2d"}, "decisionPolicy": "auto"}}
    f = tmp_path / "abn.yaml"
    f.write_text(yaml.safe_dump(rollout))
    try:
        proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "rollout", "-f", str(f), "--dir", str(root), "--json"],
                              capture_output=True, text=True, timeout=900)
    finally:
        stop_leftovers(root.resolve())
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = LocalStore(root).get("rollouts", "default", "tiny-abn")["status"]
    assert st["phase"] in ("Promoted", "RolledBack", "Inconclusive") and st["readouts"] >= 1
    # an arm stopped early (futile or harmful, status.arms[].stoppedAt) keeps its count of that readout while the
    # others' grow (its users keep their arm, served control's model): the thirds hold among the arms still read
    n = {a["name"]: a["n"] for a in st["arms"] if not a.get("stoppedAt")}
    total = sum(n.values())
    assert total > 0 and all(abs(v / total - 1 / len(n)) < 0.1 for v in n.values()), st["arms"]


@pytest.mark.slow
@pytest.mark.prometheus
def test_a_rollout_decides_on_sql_metrics_over_the_simulated_users_days_in_postgresql(evolved, tmp_path):
    """`cambrian rollout --warehouse-url postgresql://... --warehouse-metrics FILE` on a real PostgreSQL (the
    password only in PGPASSWORD): the simulated users' days land in the product's own table there, the
    collector lands its exposures there and computes the north star from the user's SQL, and the rollout
    concludes on it. The sums PostgreSQL computes equal those of the collector's own log."""
    import ibis

    from cambrian.online.aggregate import arm_statistics
    from cambrian.online.collector import Store
    from cambrian.online.warehouse import WarehouseMetric, metric_sums
    from cambrian.testing.dataservers import postgres_server

    root = evolved[0]
    evo = _objects(root, "evolutions")[0]["status"]
    name = next(h["metadata"]["name"] for h in sorted(_objects(root, "hypotheses"), key=lambda h: h["metadata"]["name"])
                if h["status"].get("bundleUri"))
    bundle = next(h["status"]["bundleUri"] for h in _objects(root, "hypotheses") if h["metadata"]["name"] == name)
    rollout = {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "tiny-sql"},
        "spec": {"evolutionRef": {"name": "tiny"}, "control": {"name": "control", "bundle": evo["champion"]["bundle"]},
                 "treatments": [{"name": "t", "hypothesisRef": {"name": name}, "bundle": bundle}], "salt": "tiny-sql",
                 "ramp": {"steps": [{"weights": [50, 50], "duration": "1d"}]},
                 "metrics": {"northStar": [{"name": "watch_sql"}],
                             "guardrails": [{"metric": "ctr_sql", "direction": "maximize", "margin": 0.9}],
                             "readout": {"interval": "1d"}},
                 "statistics": {"minSamplePerArm": 50, "maxDuration": "2d"}, "decisionPolicy": "auto"}}
    f, metrics = tmp_path / "sql.yaml", tmp_path / "metrics.yaml"
    f.write_text(yaml.safe_dump(rollout))
    watch = "SELECT user_id, day, minutes AS value FROM sim_user_days"
    metrics.write_text(yaml.safe_dump([{"name": "watch_sql", "sql": watch},
                                       {"name": "ctr_sql", "kind": "ratio", "sql": "SELECT user_id, day, clicks AS "
                                        "numerator, impressions AS denominator FROM sim_user_days"}]))
    with postgres_server() as pg:
        env = {**os.environ, "PGPASSWORD": pg.password, "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "rollout", "-f", str(f), "--dir", str(root),
                                   "--json", "--warehouse-url", pg.url(), "--warehouse-metrics", str(metrics)],
                                  capture_output=True, text=True, timeout=900, env=env)
        finally:
            stop_leftovers(root.resolve())
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert pg.password not in proc.stdout + proc.stderr
        st = LocalStore(root).get("rollouts", "default", "tiny-sql")["status"]
        assert st["phase"] in ("Promoted", "RolledBack", "Inconclusive") and st["readouts"] >= 1, st
        store = Store(root / "rollouts" / "tiny-sql" / "collector.sqlite")
        ud, ex = store.frames()
        closed = store.get_meta("closed_day", -1)
        store.close()
        con = ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                    database=pg.database)
        try:
            days = con.table("sim_user_days").group_by("day").aggregate(n=ibis._.count()).execute()
            landed = metric_sums(con, "tiny-sql", WarehouseMetric("watch_sql", watch), closed)
            exposures = con.table("cambrian_exposures").count().execute()
        finally:
            con.disconnect()
    # every day the collector holds (the pre-period and each played day) is in the product's table, once
    assert dict(zip(days["day"], days["n"])) == ud.groupby("day").size().to_dict()
    assert exposures == len(ex) > 0
    want = arm_statistics(ex, ud, closed)["watch_minutes"]
    assert set(landed) == {"control", "t"}
    for arm, sums in landed.items():
        for k, v in sums.to_dict().items():
            assert v == pytest.approx(want[arm][k], rel=1e-9, abs=1e-9), (arm, k)
    # the decision was read from the warehouse's metric: its effect, on users up to the last readout
    assert [(e["arm"], e["metric"]) for e in st["effects"]] == [("t", "watch_sql")], st
    assert all(0 < a["n"] <= landed[a["name"]].n for a in st["arms"]), st["arms"]


@pytest.mark.slow
@pytest.mark.prometheus
def test_a_local_rollout_is_rolled_back_by_a_promql_guardrail_over_the_users_own_prometheus(evolved, tmp_path):
    """`cambrian rollout --promql-url URL`: the user's own Prometheus scrapes the user's exporter, whose per-arm
    sums over users say the treatment serves 30% slower; the rollout's guardrail on that PromQL metric (margin
    5%) rolls it back, as it would a collector metric. A template that Prometheus cannot parse fails the next
    Rollout before any arm starts."""
    import numpy as np

    from cambrian.online.prometheus import PrometheusProcess
    from cambrian.testing.exporter import Exporter

    rng = np.random.default_rng(4)
    lines = []
    for arm, lift in (("control", 1.0), ("t", 1.3)):
        ms = rng.gamma(9.0, 20.0, 1200) * lift
        lines += [f'shop_latency_users{{arm="{arm}"}} {len(ms)}', f'shop_latency_ms_sum{{arm="{arm}"}} {float(ms.sum())!r}',
                  f'shop_latency_ms_sq_sum{{arm="{arm}"}} {float((ms ** 2).sum())!r}']
    exporter = Exporter("\n".join(lines) + "\n")
    root = evolved[0]
    evo = _objects(root, "evolutions")[0]["status"]
    name, bundle = next((h["metadata"]["name"], h["status"]["bundleUri"])
                        for h in sorted(_objects(root, "hypotheses"), key=lambda h: h["metadata"]["name"])
                        if h["status"].get("bundleUri"))
    arm = 'arm="{{arm}}"'
    latency = {"name": "latency_ms", "kind": "mean", "queries": {
        "users": f"sum(shop_latency_users{{{arm}}})", "sumY": f"sum(shop_latency_ms_sum{{{arm}}})",
        "sumY2": f"sum(shop_latency_ms_sq_sum{{{arm}}})"}}

    def rollout(name_: str, promql: dict) -> Path:
        f = tmp_path / f"{name_}.yaml"
        f.write_text(yaml.safe_dump({
            "apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name_},
            "spec": {"evolutionRef": {"name": "tiny"}, "control": {"name": "control", "bundle": evo["champion"]["bundle"]},
                     "treatments": [{"name": "t", "hypothesisRef": {"name": name}, "bundle": bundle}], "salt": name_,
                     "ramp": {"steps": [{"weights": [50, 50], "duration": "1d"}]},
                     "metrics": {"northStar": [{"name": "watch_minutes"}], "promql": [promql],
                                 "guardrails": [{"metric": "latency_ms", "direction": "minimize", "margin": 0.05}],
                                 "readout": {"interval": "1d"}},
                     "statistics": {"minSamplePerArm": 50, "maxDuration": "3d"}, "decisionPolicy": "auto"}}))
        return f

    try:
        with PrometheusProcess({"shop": [exporter.target]}) as prom:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            try:
                proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "rollout", "-f", str(rollout("tiny-slow", latency)),
                                       "--dir", str(root), "--json", "--promql-url", prom.url],
                                      capture_output=True, text=True, timeout=900, env=env)
                assert proc.returncode == 0, proc.stderr[-3000:]
                broken = {**latency, "queries": {**latency["queries"], "sumY": "sum(shop_latency_ms_sum{" + arm}}
                bad = subprocess.run([sys.executable, "-m", "cambrian.cli", "rollout", "-f", str(rollout("tiny-bad", broken)),
                                      "--dir", str(root), "--json", "--promql-url", prom.url],
                                     capture_output=True, text=True, timeout=900, env=env)
            finally:
                stop_leftovers(root.resolve())
    finally:
        exporter.close()
    st = LocalStore(root).get("rollouts", "default", "tiny-slow")["status"]
    assert st["phase"] == "RolledBack", st
    assert "latency_ms" in st["reason"], st["reason"]
    st = LocalStore(root).get("rollouts", "default", "tiny-bad")["status"]
    assert st["phase"] == "Failed" and "Prometheus refuses the query" in st["reason"], (st, bad.stderr[-2000:])
    assert st.get("startedAt") is None and not any(a.get("ready") for a in st.get("arms") or [])


def test_a_concluded_rollout_is_parked_and_the_core_converges_on_it(tmp_path):
    """After its decision a rollout has no users of its own: its arms are remembered, not served, no day is
    played for it, and the core's finishing step (keep control, route 100% there) converges at once,
    also for a new platform after a restart."""
    from cambrian.operator import loop
    from cambrian.operator.platform.local import LocalPlatform

    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    store = LocalStore(root)
    spec = {"control": {"name": "control", "bundle": "file:///nowhere/control"},
            "treatments": [{"name": "t", "hypothesisRef": {"name": "h"}, "bundle": "file:///nowhere/t"}], "salt": "s",
            "ramp": {"steps": [{"weights": [50, 50]}]}, "metrics": {"northStar": [{"name": "watch_minutes"}]}}
    store.create({"kind": "Rollout", "metadata": {"name": "done"}, "spec": spec}, SIM_EPOCH)
    store.write_status("Rollout", "done", {"phase": "RolledBack", "decision": "rollback"})
    for _ in range(2):  # the second platform is the driver restarted
        p = LocalPlatform(root, store, lambda: SIM_EPOCH, data_dir=data)
        steps = []
        for _ in range(3):
            s = loop.step("Rollout", store.get("rollouts", "default", "done"), store, p, SIM_EPOCH)
            store.write_status("Rollout", "done", s.result.status.wire())
            steps.append(s.result.kinds())
        assert steps[-1] == [] and steps[-2] == []  # converged
        assert p.router_weights(loop.R.owner_of(loop.meta_of(store.get("rollouts", "default", "done"))), {}) == \
            {"control": 100, "t": 0}
        assert p.routed() == [] and not list(root.glob("rollouts/done/services/*.port"))  # nothing runs
        p.close()


def test_a_launch_makes_the_driver_wait_for_the_next_review(tmp_path, monkeypatch):
    """The driver ends a run once a review has seen every scored hypothesis and started nothing. A review in the
    step that launches a champion saw its slots still taken (a rollout of the old champion ended in that step):
    after a launch the next review is waited for, so a scored hypothesis is tested against the new champion."""
    from cambrian.operator import api, loop
    from cambrian.operator.reconcile.common import Result

    driver = LocalDriver(tmp_path, workers=1, warm=False)
    scored = [{"metadata": {"name": "h"}, "status": {"phase": "Scored"}}]

    def step_to(status):
        def fake(kind, obj, *args, **kwargs):
            return loop.Step(loop.meta_of(obj), Result([], api.parse_status("Evolution", status)), hypotheses=scored)
        return fake

    evo = {"metadata": {"name": "evo", "uid": "u", "generation": 1},
           "status": {"counters": {"reviews": 1}, "champion": {"bundle": "b/old"}}}
    monkeypatch.setattr(loop, "step", step_to({"counters": {"reviews": 2}, "champion": {"bundle": "b/old"}}))
    driver._reconcile("Evolution", evo)
    assert driver._quiet_review["evo"] == frozenset({"h"})  # nothing started, nothing changed: no review pending
    evo["status"] = {"counters": {"reviews": 2}, "champion": {"bundle": "b/old"}}
    monkeypatch.setattr(loop, "step", step_to({"counters": {"reviews": 3}, "champion": {"bundle": "b/new"}}))
    driver._reconcile("Evolution", evo)
    assert driver._quiet_review["evo"] is None


def test_a_hypothesis_whose_rollout_concluded_keeps_its_evolution_busy_until_it_moves_on(tmp_path):
    """Its next phase (Launched, Retired, or Scored again to be tested against a new champion) waits on the
    Evolution applying the decision: the run is not over while it waits, and is once it has moved on."""
    from cambrian.operator.reconcile import hypothesis as H

    driver = LocalDriver(tmp_path, workers=1, warm=False)
    evo = {"metadata": {"name": "evo"}, "status": {"phase": "BudgetExhausted", "champion": {"bundle": "b"},
                                                   "nextReviewAt": "2100-01-01T00:00:00Z"}}
    ref = {"evolutionRef": {"name": "evo"}}

    def hyp(phase, reason=None):
        conditions = [{"type": "Live", "status": "True", "reason": reason}] if reason else []
        return {"metadata": {"name": "h"}, "spec": ref, "status": {"phase": phase, "conditions": conditions}}

    for reason in (H.AWAITING_LAUNCH, H.AWAITING_DECISION):
        assert driver.evolutions_busy([evo], [hyp("Live", reason)])
    assert not driver.evolutions_busy([evo], [hyp("Live", "InRollout")])  # its rollout is live: finished() waits
    assert not driver.evolutions_busy([evo], [hyp("Retired")])
