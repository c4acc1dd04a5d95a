"""The cluster pod's scorer reads what the earlier step containers left in their volumes as untrusted input."""

from __future__ import annotations

import json
import shutil

import pytest

from cambrian.trainer.sandbox import StageFailure
from cambrian.trainer.train import STEP_STATUS, SandboxLimits, _Contained, exported_program


def _step(work, name="training"):
    (work / f"{name}-out").mkdir(parents=True)
    return _Contained(work, name, contain=False, limits=SandboxLimits(), gpu=False, in_pod=True)


def test_a_step_without_a_readable_status_is_a_crash(tmp_path):
    step = _step(tmp_path)
    with pytest.raises(StageFailure, match="left no readable outcome") as info:
        step.outcome()
    assert info.value.stage == "crash"
    (step.scratch / STEP_STATUS).write_text('{"returncode": "0"}')
    with pytest.raises(StageFailure, match="left no readable outcome"):
        step.outcome()


def test_links_in_a_step_volume_are_not_followed(tmp_path):
    """A candidate that links its outputs to files only the scorer sees (the held-out data) gets nothing read."""
    secret = tmp_path / "heldout.json"
    secret.write_text(json.dumps({"stage": "training", "reason": "HELD-OUT-LABELS"}))
    step = _step(tmp_path / "work")
    (step.scratch / STEP_STATUS).write_text(json.dumps({"returncode": 4, "wall_seconds": 1.0, "timed_out": False}))
    (step.scratch / "error.json").symlink_to(secret)
    (step.scratch / "model.pt2").symlink_to(secret)
    with pytest.raises(StageFailure) as info:
        step.outcome()
    assert "HELD-OUT-LABELS" not in str(info.value)
    with pytest.raises(StageFailure, match="without an exported model"):
        exported_program(step)


def test_a_successful_step_gives_its_result(tmp_path):
    step = _step(tmp_path)
    (step.scratch / STEP_STATUS).write_text(json.dumps({"returncode": 0, "wall_seconds": 2.0, "timed_out": False}))
    (step.scratch / "result.json").write_text(json.dumps({"train_seconds": 1.5, "device": "cpu"}))
    assert step.outcome() == {"train_seconds": 1.5, "device": "cpu"}


def _pod_work(tmp_path):
    """The pod's step volumes (emptyDirs in the cluster)."""
    work = tmp_path / "work"
    for volume in ("training-in", "training-out", "scoring-in", "scoring-out"):
        (work / volume).mkdir(parents=True)
    return work


def test_a_gang_pods_train_step_runs_the_workers_and_its_scorer_reports_them(world_dir, quick_config, tmp_path):
    """The steps of one gang pod (operator/platform/gang.py): prepare writes a shard per worker, the train step
    runs torchrun's agent with the appended flags, the scorer reads rank 0's model and reports the workers."""
    from cambrian.trainer import pod
    from cambrian.trainer.distributed import shard_name
    from cambrian.trainer.train import prepare_pod, score_pod

    work = _pod_work(tmp_path)
    prepare_pod(quick_config, world_dir, work, workers=2)
    assert sorted(p.name for p in (work / "training-in").glob("train*.parquet")) == [shard_name(0, 2), shard_name(1, 2)]
    assert pod.main(["train", "--work", str(work), "--wall-seconds", "600", "--workers", "2", "--nodes", "1"]) == 0
    assert json.loads((work / "training-out" / STEP_STATUS).read_text())["returncode"] == 0
    assert pod.main(["predict", "--work", str(work), "--wall-seconds", "600"]) == 0
    metrics = score_pod(quick_config, world_dir, tmp_path / "out", work, workers=2)
    assert metrics["workers"] == 2 and metrics["sandbox"] == "pod" and metrics["auc"] > 0.6
    assert (tmp_path / "out" / "bundle" / "model.pt2").is_file()


def test_a_gang_pod_without_rank_0_scores_nothing_and_ends_as_a_worker(world_dir, quick_config, tmp_path):
    from cambrian.trainer.train import score_pod

    work = _pod_work(tmp_path)
    out = work / "training-out"
    (out / STEP_STATUS).write_text(json.dumps({"returncode": 0, "wall_seconds": 2.0, "timed_out": False}))
    (out / "result.json").write_text(json.dumps({"role": "worker"}))
    assert score_pod(quick_config, world_dir, tmp_path / "out", work, workers=4)["role"] == "worker"
    assert not (tmp_path / "out" / "metrics.json").exists()
    # a single pod's trainer cannot claim to be a worker to skip scoring: no model is a failed export
    with pytest.raises(StageFailure, match="without an exported model"):
        score_pod(quick_config, world_dir, tmp_path / "out", work)


def _baseline_pod(tmp_path, name, config, data, reuse):
    """One baseline run through the pod's steps, each as its container runs it."""
    from cambrian.trainer import pod
    from cambrian.trainer.train import prepare_pod, score_pod

    work = _pod_work(tmp_path / name)
    prepare_pod(config, data, work, reuse=reuse)
    assert pod.main(["train", "--work", str(work), "--wall-seconds", "600"]) == 0
    assert pod.main(["predict", "--work", str(work), "--wall-seconds", "600"]) == 0
    return work, score_pod(config, data, tmp_path / name / "out", work, reuse=reuse)


def test_a_second_baseline_pod_on_the_same_data_reuses_the_stored_run_without_running_a_step(world_dir, quick_config,
                                                                                              tmp_path):
    """Issue 15, item 3 in the cluster: the first pod trains and its scorer keeps the run on the claim; a pod of a
    second Evolution, whose data is written afresh (another copy, the same content), trains nothing and reports the
    stored metrics with a copy of the bundle. Other training settings are another run."""
    import shutil

    from cambrian.trainer import runstore

    reuse = {"store": str(tmp_path / "claim"), "training": {"cpu": "2"}}
    _, first = _baseline_pod(tmp_path, "pod1", quick_config, world_dir, reuse)
    assert "reused" not in first and len(list((tmp_path / "claim" / runstore.STORE).iterdir())) == 1
    copy = tmp_path / "data-again"
    shutil.copytree(world_dir, copy)  # new files, new modification times, the same bytes
    work, second = _baseline_pod(tmp_path, "pod2", quick_config, copy, reuse)
    assert second["reused"] and {k: v for k, v in second.items() if k != "reused"} == first
    assert (work / "training-in" / runstore.REUSE).exists() and not list((work / "training-in").glob("*.parquet"))
    assert not (work / "training-out" / "model.pt2").exists() and not (work / "scoring-out" / "predictions.npy").exists()
    bundle = lambda name: (tmp_path / name / "out" / "bundle" / "model.pt2").read_bytes()
    assert bundle("pod2") == bundle("pod1")
    _, third = _baseline_pod(tmp_path, "pod3", quick_config, copy, {**reuse, "training": {"cpu": "4"}})
    assert "reused" not in third and len(list((tmp_path / "claim" / runstore.STORE).iterdir())) == 2


def test_the_scorer_decides_reuse_by_itself(world_dir, quick_config, tmp_path):
    """Steps skipped for a stored run are no claim to it: without the entry the scorer fails the run (nothing was
    trained) instead of reporting anything. The scorer sees only the volumes its container mounts (training-out and
    scoring-out, not prepare's inputs), so the pod here holds nothing else."""
    from cambrian.trainer import pod, runstore
    from cambrian.trainer.train import score_pod

    work = _pod_work(tmp_path)
    for step in ("training", "scoring"):  # as prepare leaves a stored run's pod: its steps then run nothing
        (work / f"{step}-in" / runstore.REUSE).write_text('{"key": "0"}')
    assert pod.main(["train", "--work", str(work)]) == 0 and pod.main(["predict", "--work", str(work)]) == 0
    for volume in ("training-in", "scoring-in"):
        shutil.rmtree(work / volume)
    with pytest.raises(StageFailure, match="run store, which no longer has it") as info:
        score_pod(quick_config, world_dir, tmp_path / "out", work, reuse={"store": str(tmp_path / "claim")})
    assert info.value.stage == "reuse" and not (tmp_path / "out" / "metrics.json").exists()


def test_a_pods_data_is_known_by_its_content(tmp_path):
    """The pod's world or snapshot is written afresh each time: the same bytes are the same data, one changed
    byte is other data; locally (modification times) a copy is other data."""
    import os

    from cambrian.trainer.runstore import data_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "t").mkdir(parents=True)
        (d / "t" / "rows.parquet").write_bytes(b"\x00" * 3000 + b"rows")
    os.utime(b / "t" / "rows.parquet", (1, 1))
    assert data_fingerprint(a, content=True) == data_fingerprint(b, content=True)
    assert data_fingerprint(a) != data_fingerprint(b)
    (b / "t" / "rows.parquet").write_bytes(b"\x00" * 3000 + b"rowz")
    assert data_fingerprint(a, content=True) != data_fingerprint(b, content=True)
