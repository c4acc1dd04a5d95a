"""Offline-loop faults: the operator's loop on the LocalDriver (`cambrian evolve -f`) SIGKILLed at random points
and resumed, and trainers that crash, hang, blow their memory or write garbage metrics.

Stand-in trainers (tests/agents/conftest.py FAKE_TRAINER, scripted by `--mode`, and a garbage writer: same CLI
and output contract as `cambrian train`) keep these runs to seconds; the real
trainer under the same sandbox is covered by test_untrusted_code.py::test_real_trainer_ends_hostile_candidates_with_the_reason.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from cambrian.agents.runner import RunLimits, run_candidate
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta

SCENARIO = Path(__file__).resolve().parents[1] / "local" / "tiny-evolution.yaml"
TERMINAL = ("Scored", "Failed", "Rejected")

def _objects(root: Path, plural: str) -> list[dict]:
    from cambrian.operator.localstore import LocalStore

    return LocalStore(root).list(plural)


def drive(root: Path, data: Path, trainer: list[str], evaluations: int, limits: RunLimits | None = None):
    """The tiny scenario's Evolution (offline loop alone: no review starts a Rollout) on the LocalDriver."""
    from cambrian.operator.local_cli import apply_overrides
    from cambrian.operator.local_driver import NO_REVIEW, LocalDriver
    from cambrian.operator.localstore import load_manifests

    objs = apply_overrides(load_manifests(SCENARIO), None, None, None, evaluations=evaluations)
    objs[0]["spec"]["cadence"]["online"] = NO_REVIEW
    driver = LocalDriver(root, data_dir=data, train_command=trainer, limits=limits, workers=2, poll_s=0.1)
    driver.apply(objs)
    summary = driver.run()  # closes the platform (stops what it started) however it ends
    # the budget spent and nothing in flight; a scored candidate waits for a review that never comes (NO_REVIEW),
    # so the driver may also end by jumping to its time limit
    assert summary.phases["Evolution"] == {"tiny": "BudgetExhausted"}, summary
    assert all(p in TERMINAL + ("Validated",) for p in summary.phases["Hypothesis"].values()), summary
    return summary


@pytest.mark.parametrize("mode,limits,stage,words", [
    ("crash", {}, "crash", "boom"),
    ("hang", {"wall_seconds": 3}, "timeout", "wall-time limit"),
    ("bomb", {"rss_mb": 300}, "memory", "MiB resident"),
    ("garbage-list", {}, "metrics", "metrics.json"),
    ("garbage-infinite", {}, "metrics", "metrics.json"),
])
def test_the_loop_survives_a_misbehaving_trainer_and_never_calls_it_better(tmp_path, tiny_world, fake_trainer, mode,
                                                                           limits, stage, words):
    """Every candidate's training run crashes, hangs, eats memory or writes garbage metrics: each Hypothesis
    ends Failed with the stage and the reason, none is scored or rolled out, and the Evolution finishes."""
    trainer = (garbage_trainer(tmp_path, mode.split("-")[1]) if mode.startswith("garbage")
               else fake_trainer + ["--mode", mode])
    t0 = time.monotonic()
    drive(tmp_path / "run", tiny_world, trainer, evaluations=4, limits=RunLimits(**{"wall_seconds": 30, **limits}))
    assert time.monotonic() - t0 < 120
    hyps = _objects(tmp_path / "run", "hypotheses")
    trained = [h for h in hyps if h["status"].get("attempts")]
    assert trained and all(h["status"]["phase"] == "Failed" and h["status"].get("failureStage") == stage
                           and words in h["status"].get("reason", "") for h in trained), \
        [(h["metadata"]["name"], h["status"]) for h in hyps]
    assert not any(h["status"].get("verdict") for h in hyps) and not _objects(tmp_path / "run", "rollouts")
    evo = _objects(tmp_path / "run", "evolutions")[0]["status"]
    assert evo["phase"] == "BudgetExhausted" and evo["champion"]["name"] == "baseline"


def _summary(root: Path) -> dict[str, tuple]:
    return {h["metadata"]["name"]: (h["status"].get("phase"), json.dumps(h["spec"].get("delta"), sort_keys=True),
                                    h["status"].get("verdict"))
            for h in _objects(root, "hypotheses")}


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path, tiny_world, fake_trainer):
    """The driver SIGKILLed at random points (between object writes, while candidates train) and started again
    until done ends with the same Hypotheses, deltas and verdicts as an uninterrupted run, each training run
    finished once, and no candidate outliving the killed driver."""
    data = tiny_world
    drive(tmp_path / "reference", data, fake_trainer, evaluations=8)
    want = _summary(tmp_path / "reference")

    run = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_offline_faults import drive
        from pathlib import Path
        drive(Path({str(run)!r}), Path({str(data)!r}), {fake_trainer!r}, evaluations=8)
    """)
    rng = random.Random(8)
    kills = 0

    def progress() -> int:  # object writes and finished runs so far: a point further into the run
        objs = run / "objects"
        return (sum(1 for _ in objs.rglob("*.yaml")) if objs.is_dir() else 0) + len(list(run.glob("jobs/*/result.json")))

    for _ in range(4):
        target = progress() + rng.randint(1, 4)
        proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "FAKE_SLOW": "0.3"})
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline and progress() < target:
            time.sleep(0.05)
        if proc.poll() is not None:
            break  # finished before the chosen point
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        give_up = time.time() + 15  # the parent-death signal is delivered at once; reaping may lag under load
        alive = children
        while alive and time.time() < give_up:
            alive = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
            time.sleep(0.2)
        assert not alive, "a candidate outlived the killed driver"
    assert kills >= 2
    drive(run, data, fake_trainer, evaluations=8)
    got = _summary(run)
    assert got == want  # nothing lost, nothing invented: the same hypotheses, deltas and verdicts
    assert all(v[0] in TERMINAL for v in got.values())
    results = [json.loads(p.read_text()) for p in run.glob("jobs/*/result.json")]
    assert len(results) == len(list((tmp_path / "reference").glob("jobs/*/result.json")))  # each run finished once
    assert all(r["state"] == "Succeeded" for r in results)


# ---- trainers that misbehave -------------------------------------------------------------------------

def mode_delta(mode: str):
    return parse_delta({"component": "optimizer", "patch": {"lr": 0.01, "params": {"mode": mode}}})


@pytest.mark.parametrize("mode,limits,stage,words", [
    ("crash", {}, "crash", "boom"),
    ("hang", {"wall_seconds": 3}, "timeout", "wall-time limit"),
    ("sleep", {"wall_seconds": 3}, "timeout", "wall-time limit"),
    ("bomb", {"rss_mb": 300}, "memory", "MiB resident"),
    ("gate", {}, "static", "not allowed"),
])
def test_misbehaving_trainer_ends_failed_with_the_reason(tmp_path, tiny_world, fake_trainer, mode, limits, stage, words):
    out = run_candidate(ModelConfig(), mode_delta(mode), tiny_world, tmp_path / mode,
                        RunLimits(**{"wall_seconds": 30, **limits}), fake_trainer)
    assert not out.ok and out.failure is not None
    assert out.failure.stage == stage and words in out.failure.reason, out.failure
    assert out.wall_seconds < 25


GARBAGE = {
    "nan": '{"val_loss": NaN, "auc": 0.5}',
    "infinite": '{"val_loss": -Infinity, "return_corr": Infinity}',
    "strings": '{"val_loss": "low", "auc": "high"}',
    "out-of-range": '{"val_loss": 0.3, "auc": 7.5, "return_corr": -3}',
    "negative-loss": '{"val_loss": -1e308}',
    "missing": '{"schema_version": 1}',
    "list": "[1, 2, 3]",
    "truncated": '{"val_loss": 0.1',
    "binary": None,
    "bool": '{"val_loss": true}',
}


def garbage_trainer(tmp_path, kind: str) -> list[str]:
    script = tmp_path / "garbage.py"
    payload = GARBAGE[kind]
    write = ("open(p, 'wb').write(bytes([255, 254, 0, 1]))" if payload is None else f"open(p, 'w').write({payload!r})")
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        a = sys.argv[1:]; opt = {{a[i]: a[i + 1] for i in range(0, len(a) - 1, 2) if a[i].startswith("--")}}
        os.makedirs(opt["--out"], exist_ok=True); p = os.path.join(opt["--out"], "metrics.json")
        if "--delta" not in opt:  # the baseline trains normally; only candidates write garbage
            json.dump({{"val_loss": 0.5, "auc": 0.7, "long_watch_corr": 0.2, "return_corr": 0.1, "like_corr": 0.1,
                       "top_watch_share": 0.07}}, open(p, "w"))
        else:
            {write}
    """))
    return [sys.executable, str(script)]


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_metrics_are_a_failure_not_a_score(tmp_path, tiny_world, kind):
    out = run_candidate(ModelConfig(), mode_delta("ok"), tiny_world, tmp_path / "c", RunLimits(wall_seconds=30),
                        garbage_trainer(tmp_path, kind))
    assert not out.ok and out.metrics is None
    assert out.failure.stage in ("metrics", "sandbox") and "metrics.json" in out.failure.reason, out.failure


# ---- the real trainer's sandbox in the loop's worker ----------------------------------------------------

def test_loop_worker_refuses_plugin_code_where_the_sandbox_cannot_be_built(tmp_path, tiny_world, monkeypatch):
    """No bubblewrap on the PATH: a candidate with code ends Failed(stage sandbox) with the reason; it never
    runs uncontained, and the worker itself carries on."""
    import shutil

    bindir = tmp_path / "bin"
    bindir.mkdir()
    if shutil.which("unshare"):  # the worker's own network isolation stays available; only bwrap is missing
        (bindir / "unshare").symlink_to(shutil.which("unshare"))
    monkeypatch.setenv("PATH", str(bindir))
    delta = parse_delta({"component": "optimizer",
                         "code": "def build_optimizer(params, cfg):\n    return torch.optim.SGD(params, lr=cfg.lr)\n"})
    cfg = ModelConfig.model_validate({"training": {"epochs": 1, "device": "cpu"}})
    out = run_candidate(cfg, delta, tiny_world, tmp_path / "c", RunLimits(wall_seconds=120))
    assert not out.ok and out.failure.stage == "sandbox", out.failure
    assert "bubblewrap" in out.failure.reason and out.failure.exit_code == 4
    assert not (out.out_dir / "metrics.json").exists()
