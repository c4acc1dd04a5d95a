"""The cluster pod's scorer reads what the earlier step containers left in their volumes as untrusted input."""

from __future__ import annotations

import json

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
