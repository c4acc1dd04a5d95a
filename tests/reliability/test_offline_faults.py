"""Offline-loop faults: `cambrian evolve` SIGKILLed at random points and resumed, and trainers that crash,
hang, blow their memory or write garbage metrics.

The stand-in trainer (tests/agents/conftest.py FAKE_TRAINER: same CLI and output contract as
`cambrian train`, scripted through the delta) keeps these runs to seconds; the real trainer under the same
sandbox is covered by test_untrusted_code.py::test_real_trainer_ends_hostile_candidates_with_the_reason.
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

import psutil
import pytest
import yaml

from cambrian.agents.evolve import run_evolution
from cambrian.agents.journal import Journal
from cambrian.agents.runner import RunLimits, run_candidate
from cambrian.agents.settings import parse_evolve_config
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta

TERMINAL = ("Scored", "Failed", "Rejected")


def cfg_dict(run_dir, world, trainer, **over):
    d = {"data_dir": str(world), "run_dir": str(run_dir), "generations": 2, "workers": 2,
         "personas": ["optimizer", "reward"], "train_command": trainer, "limits": {"wall_seconds": 30},
         "noise": {"baseline_seeds": 2, "confirm_top": 1, "confirm_seeds": 1}}
    d.update(over)
    return d


def summary(run_dir) -> dict[str, tuple]:
    j = Journal(run_dir, readonly=True)
    return {h.id: (h.phase, h.fingerprint, json.dumps(h.delta, sort_keys=True)) for h in j.hypotheses}


def starts(run_dir) -> dict[str, dict[str, int]]:
    return {h.id: h.meta.get("starts", {}) for h in Journal(run_dir, readonly=True).hypotheses}


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path, tiny_world, fake_trainer):
    ref = tmp_path / "reference"
    run_evolution(parse_evolve_config(cfg_dict(ref, tiny_world, fake_trainer), env={}))
    want = summary(ref)

    run = tmp_path / "killed"
    d = cfg_dict(run, tiny_world, fake_trainer)
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(d))
    script = textwrap.dedent(f"""
        from cambrian.agents.settings import load_evolve_config
        from cambrian.agents.evolve import run_evolution
        run_evolution(load_evolve_config({str(tmp_path / 'evolve.yaml')!r}))
    """)
    rng = random.Random(8)
    journal = run / "journal.jsonl"
    kills = 0
    for attempt in range(4):
        lines_now = len(journal.read_text().splitlines()) if journal.exists() else 0
        target = lines_now + rng.randint(3, 25)  # a random point further into the run
        proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "FAKE_SLOW": "0.3"})
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) >= target:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            break  # finished before the chosen point
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        time.sleep(0.5)
        alive = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        assert not alive, "a candidate outlived the killed loop"
        Journal(run, readonly=True)  # the journal replays after every kill (a torn last line is dropped)
    assert kills >= 2
    result = run_evolution(parse_evolve_config(d, env={}))
    assert result.stop_reason == "completed all generations"
    got = summary(run)
    # nothing lost, nothing invented: the same hypotheses, deltas and fingerprints as the uninterrupted run
    assert sorted(got) == sorted(want)
    assert {k: v[1:] for k, v in got.items()} == {k: v[1:] for k, v in want.items()}
    assert all(v[0] in TERMINAL for v in got.values())
    # nothing duplicated: every seed of every candidate started at most twice (once more after a kill
    # caught it in training), and finished candidates were never started again
    for hid, s in starts(run).items():
        assert all(n <= 2 for n in s.values()), (hid, s)
    fps = [v[1] for v in got.values() if v[0] != "Rejected" and v[1]]
    assert len(fps) == len(set(fps))
    # the finished trainings are exactly the reference run's: nothing trained twice to completion; the
    # extra starts are the runs the kills interrupted (at most `workers` in flight per kill)
    finished = Journal(run, readonly=True).state.evaluations
    assert finished == Journal(ref, readonly=True).state.evaluations
    extra = sum(sum(s.values()) for s in starts(run).values()) - finished
    assert 0 <= extra <= kills * d["workers"]


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
            json.dump({{"val_loss": 0.5, "auc": 0.7, "long_watch_corr": 0.2, "return_corr": 0.1, "like_corr": 0.1}},
                      open(p, "w"))
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


@pytest.mark.parametrize("kind", ["list", "infinite"])
def test_loop_survives_garbage_metrics_and_never_calls_them_better(tmp_path, tiny_world, kind):
    cfg = parse_evolve_config(cfg_dict(tmp_path / "run", tiny_world, garbage_trainer(tmp_path, kind), generations=1,
                                       repair=False), env={})
    result = run_evolution(cfg)
    assert result.stop_reason == "completed all generations"
    assert not result.winners
    cands = [h for h in Journal(cfg.run_dir, readonly=True).hypotheses if h.id != "baseline"]
    trained = [h for h in cands if h.phase != "Rejected"]
    assert trained and all(h.phase == "Failed" and "metrics.json" in (h.failure.reason if h.failure else "")
                           for h in trained), [(h.id, h.phase, h.reason) for h in trained]


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
