"""Multi-fidelity (spec.fidelity) on the local platform, through the driver and the reconcile core.

Fast: the stand-in trainer (tests/local/fake_trainer.py scores a first look 0.1 worse, and a candidate's first
look by --look-gain): stopped candidates never train in full, promoted ones do, and the champion's first-look
seeds are trained once and reused by a later Evolution on the same data. Slow: the real trainer on a small
world, where a first look must really train fewer epochs on fewer examples."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cambrian.operator.local_driver import LocalDriver
from cambrian.operator.localstore import LocalStore, load_manifests
from cambrian.operator.platform.local import stop_leftovers
from cambrian.trainer.fidelity import training_rows

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "tiny-evolution.yaml"
FAKE_TRAINER = [sys.executable, str(HERE / "fake_trainer.py")]
FIDELITY = {"firstLook": {"epochFraction": 0.5, "sampleFraction": 0.25}}


def _evolution(evaluations: int, name: str = "tiny") -> dict:
    from cambrian.operator.local_cli import apply_overrides

    (obj,) = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=evaluations)
    obj["metadata"]["name"] = name
    obj["spec"]["fidelity"] = FIDELITY
    return obj


def _jobs(root: Path) -> list[dict]:
    out = []
    for j in sorted((root / "jobs").iterdir()):
        out.append({**json.loads((j / "job.json").read_text()), "result": json.loads((j / "result.json").read_text())})
    return out


def _drive(root: Path, data: Path, obj: dict, trainer_args: list[str], **kw) -> None:
    driver = LocalDriver(root, data_dir=data, train_command=FAKE_TRAINER + trainer_args, poll_s=0.1, **kw)
    driver.apply([obj])
    try:
        reason = driver.run().reason
        assert kw or reason.startswith("every Evolution is done"), reason
    finally:
        stop_leftovers(root.resolve())


def test_first_looks_below_the_rule_never_train_in_full_and_the_reference_is_reused(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    (data / "world.json").write_text("{}")
    # budget 6: two baseline seeds, two first-look seeds of the baseline, two candidates' first looks
    _drive(root, data, _evolution(6), ["--look-gain", "-0.4", "--gain", "0.2"])
    store = LocalStore(root)
    (evo,) = store.list("evolutions")
    ref = evo["status"]["firstLookReference"]
    assert ref["champion"] == "baseline" and ref["metrics"]["val_loss"]["value"] == pytest.approx(0.6)
    hyps = store.list("hypotheses")
    assert len(hyps) == 2
    for h in hyps:
        st = h["status"]
        assert st["phase"] == "Scored" and st["verdict"] == "not_better" and st.get("attempts", 0) == 0
        assert st["firstLook"]["decision"] == "stopped" and st["firstLook"]["metrics"]["val_loss"] == pytest.approx(1.0)
    jobs = _jobs(root)
    looks = [j for j in jobs if j.get("fidelity")]
    assert len(jobs) == 6 and len(looks) == 4  # nothing trained in full but the baseline's own two seeds
    assert all(j["fidelity"] == {"epochFraction": 0.5, "sampleFraction": 0.25} for j in looks)
    assert evo["status"]["spend"]["evaluations"] == 6
    # a second Evolution on the same data: the baseline's seeds and its first-look seeds come from the run store
    _drive(root, data, _evolution(4, name="again"), ["--look-gain", "-0.4", "--gain", "0.2"])  # same trainer
    again = [j for j in _jobs(root) if j["owner"]["name"] == "again"]
    assert len(again) == 4 and all(j["result"].get("reused") for j in again)
    assert len(list((root / "runstore").iterdir())) == 4  # two full seeds, two first-look seeds
    # its status names the stored runs, the baseline's and its first-look reference's
    (second,) = [e for e in LocalStore(root).list("evolutions") if e["metadata"]["name"] == "again"]
    runs = second["status"]["baselineRuns"] + second["status"]["firstLookReference"]["runs"]
    assert len(runs) == 4 and sorted(r["reused"] for r in runs) == sorted(j["result"]["reused"] for j in again)


def test_a_promoted_first_look_trains_in_full_and_is_confirmed(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    # first looks level with the champion's (promoted: within a floor); full runs 0.2 better, confirmed
    from cambrian.operator.local_driver import NO_REVIEW

    obj = _evolution(7)  # two baseline seeds, two first-look seeds, then one candidate's look, full run, confirmation
    obj["spec"]["agent"].update(proposalsPerWakeup=1, quotas={"explore": 1, "exploit": 0, "innovate": 0})
    obj["spec"]["cadence"]["online"] = NO_REVIEW  # nothing is served: the stand-in's bundles cannot be
    _drive(root, data, obj, ["--look-gain", "0", "--gain", "0.2"], max_days=1)
    (h,) = LocalStore(root).list("hypotheses")
    st = h["status"]
    assert st["firstLook"]["decision"] == "promoted" and st["verdict"] == "better"
    assert [r["seed"] for r in st["seedRuns"]] == [0, 1000] and st["offlineScore"] == pytest.approx(0.3)
    mine = [j for j in _jobs(root) if j["owner"]["name"] == h["metadata"]["name"]]
    assert sorted(bool(j.get("fidelity")) for j in mine) == [False, False, True]  # look, full, confirmation


@pytest.mark.slow
def test_fidelity_on_through_the_real_trainer(tmp_path):
    """The real `cambrian train` on the tiny world: the first looks train half the epochs (1 of 2) on a quarter of
    the examples, the reference is the baseline at that fidelity, and every candidate gets a decision."""
    root = tmp_path / "run"
    obj = _evolution(6)
    spec = obj["spec"]
    spec["baseline"]["training"] = {"epochs": 2, "max_train_examples": 8000, "batch_size": 512}
    spec["data"]["world"] = {"users": 150, "days": 3, "seed": 3}
    from cambrian.operator.local_driver import NO_REVIEW

    spec["cadence"]["online"] = NO_REVIEW  # the offline loop only
    driver = LocalDriver(root, poll_s=0.2, workers=2, max_days=1)
    driver.apply([obj])
    try:
        driver.run()
    finally:
        stop_leftovers(root.resolve())
    store = LocalStore(root)
    (evo,) = store.list("evolutions")
    ref = evo["status"]["firstLookReference"]
    base = evo["status"]["baselineMetrics"]["val_loss"]
    assert ref["metrics"]["val_loss"]["seeds"] == 2 and ref["metrics"]["val_loss"]["value"] != base["value"]
    looks = [j for j in _jobs(root) if j.get("fidelity")]
    assert len(looks) == 4 and all(j["result"]["state"] == "Succeeded" for j in looks), looks
    (world,) = (root / "data").iterdir()
    sample = round(min(8000, training_rows(world, 1)) * 0.25)  # a quarter of what the full runs train on
    for j in looks:  # what the trainer did with the fidelity: the Φ it trained, as its bundle records it
        manifest = json.loads((Path(j["result"]["bundle_uri"][len("file://"):]) / "bundle.json").read_text())
        assert manifest["config"]["training"]["epochs"] == 1
        assert manifest["config"]["training"]["max_train_examples"] == sample
    hyps = store.list("hypotheses")
    assert len(hyps) == 2
    for h in hyps:
        fl = h["status"]["firstLook"]
        assert fl["decision"] in ("promoted", "stopped") and fl["noiseFloor"] > 0 and "first look" in fl["reason"]
