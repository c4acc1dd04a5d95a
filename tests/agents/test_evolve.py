"""The loop with the built-in proposer and the stand-in trainer: resume after a kill, warm start, CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import yaml
from typer.testing import CliRunner

from cambrian.agents.evolve import Evolution, run_evolution
from cambrian.agents.journal import Journal
from cambrian.agents.settings import parse_evolve_config


def cfg_dict(tmp_path, world, trainer, **over):
    d = {"data_dir": str(world), "run_dir": str(tmp_path / "run"), "generations": 1, "workers": 2,
         "train_command": trainer, "limits": {"wall_seconds": 30},
         "noise": {"baseline_seeds": 2, "confirm_top": 1, "confirm_seeds": 1}}
    d.update(over)
    return d


def starts(j):
    return {h.id: h.meta.get("starts", {}) for h in j.hypotheses}


def test_rerun_trains_nothing_twice_and_extends_generations(tmp_path, tiny_world, fake_trainer):
    cfg = parse_evolve_config(cfg_dict(tmp_path, tiny_world, fake_trainer), env={})
    first = run_evolution(cfg)
    n1 = Journal(cfg.run_dir).state.evaluations
    assert first.counts.get("Scored", 0) >= 9 and n1 >= 2 + 9
    again = run_evolution(cfg)
    assert Journal(cfg.run_dir).state.evaluations == n1 and again.stop_reason == "completed all generations"
    more = run_evolution(cfg.model_copy(update={"generations": 2}))
    j = Journal(cfg.run_dir)
    assert j.state.generations_done == {1, 2}
    assert all(s == 1 for runs in starts(j).values() for s in runs.values())  # every run started exactly once
    fps = [h.fingerprint for h in j.hypotheses if h.phase != "Rejected"]
    assert len(fps) == len(set(fps))  # the built-in proposer never re-proposes a trained configuration
    assert more.spend.evaluations == j.state.evaluations


def test_resume_after_kill_reruns_in_flight_once(tmp_path, tiny_world, fake_trainer):
    d = cfg_dict(tmp_path, tiny_world, fake_trainer, workers=2, personas=["optimizer"])
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(d))
    script = textwrap.dedent(f"""
        from cambrian.agents.settings import load_evolve_config
        from cambrian.agents.evolve import run_evolution
        run_evolution(load_evolve_config({str(tmp_path / 'evolve.yaml')!r}))
    """)
    env = {**os.environ, "FAKE_SLOW": "1.5"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    journal_path = tmp_path / "run" / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a proposed candidate is in training
        if journal_path.exists() and any('"phase":"Training"' in line and '"g001-' in line
                                         for line in journal_path.read_text().splitlines()):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("the run never started training a candidate")
    children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    def alive():
        out = []
        for pid in children:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    give_up = time.time() + 15  # the kernel delivers the parent-death signal; reaping may lag under load
    while alive() and time.time() < give_up:
        time.sleep(0.2)
    assert not alive(), "candidates outlived the killed agent"
    before = Journal(tmp_path / "run", readonly=True)
    interrupted = [h.id for h in before.hypotheses if h.phase == "Training"]
    done_before = {h.id for h in before.hypotheses if h.phase == "Scored"}
    assert interrupted

    result = run_evolution(parse_evolve_config(d, env={}))
    j = Journal(tmp_path / "run")
    assert result.stop_reason == "completed all generations"
    s = starts(j)
    for hid in interrupted:
        finished = "0" in before.get(hid).meta.get("runs", {})  # killed between its result and its verdict
        assert j.get(hid).phase == "Scored" and s[hid]["0"] == (1 if finished else 2)  # re-run at most once
    for hid in done_before:
        assert all(v == 1 for v in s[hid].values())  # finished work is never redone
    assert all(h.phase in ("Scored", "Failed", "Rejected") for h in j.hypotheses)


def test_interrupted_twice_is_failed(tmp_path, tiny_world, fake_trainer):
    cfg = parse_evolve_config(cfg_dict(tmp_path, tiny_world, fake_trainer, personas=["optimizer"]), env={})
    run_evolution(cfg)
    j = Journal(cfg.run_dir)
    h = next(h for h in j.hypotheses if h.id.startswith("g001"))
    j.update(h.id, phase="Training", meta={"entry": h.meta.get("entry"), "params": h.meta.get("params"),
                                           "starts": {"0": 2}})
    # drop the "done" mark so the generation is revisited, as after a kill
    lines = [x for x in j.path.read_text().splitlines() if '"status":"done"' not in x]
    j.path.write_text("\n".join(lines) + "\n")
    run_evolution(cfg)
    h2 = Journal(cfg.run_dir).get(h.id)
    assert h2.phase == "Failed" and h2.failure.stage == "interrupted"


def test_warm_start_reevaluates_the_best_k(tmp_path, tiny_world, fake_trainer):
    first = parse_evolve_config(cfg_dict(tmp_path / "a", tiny_world, fake_trainer, personas=["reward"]), env={})
    run_evolution(first)
    second = parse_evolve_config(cfg_dict(tmp_path / "b", tiny_world, fake_trainer, personas=["reward"],
                                          warm_start={"journal": str(first.run_dir), "k": 2}), env={})
    run_evolution(second)
    j = Journal(second.run_dir)
    warm = [h for h in j.hypotheses if h.origin.startswith("warm-start:")]
    assert len(warm) == 2 and all(h.generation == 0 and h.phase == "Scored" for h in warm)
    prev = Journal(first.run_dir)
    best_prev = max((h for h in prev.hypotheses if h.persona == "reward" and "long_watch_corr" in h.offline),
                    key=lambda h: h.offline["long_watch_corr"].mean)
    assert any(h.fingerprint == best_prev.fingerprint for h in warm)
    # gen 1 does not re-propose what the warm start already covers
    g1 = [h.fingerprint for h in j.generation_ids(1) if h.phase != "Rejected"]
    assert not set(g1) & {h.fingerprint for h in warm}


def test_cli_evolve_json_and_journal(tmp_path, tiny_world, fake_trainer, monkeypatch):
    from cambrian.cli import app as cli

    d = cfg_dict(tmp_path, tiny_world, fake_trainer, personas=["reward"], run_dir="run")
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.setenv("CAMBRIAN_EVOLVE_BUDGETS__MAX_EVALUATIONS", "4")
    res = CliRunner().invoke(cli, ["evolve", "--config", str(tmp_path / "evolve.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert "evaluations budget" in out["stop_reason"] and out["spend"]["evaluations"] == 4
    assert out["run_dir"] == str(tmp_path / "run")  # relative to the YAML file
    res = CliRunner().invoke(cli, ["journal", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert {h["id"] for h in data["hypotheses"]} >= {"baseline", "g001-01"}
    assert data["baseline"]["long_watch_corr"]["n"] == 2
    res = CliRunner().invoke(cli, ["journal", str(tmp_path / "run")])
    assert res.exit_code == 0 and "g001-01" in res.output and "baseline" in res.output


def test_cli_bad_config_names_the_field(tmp_path):
    from cambrian.cli import main

    (tmp_path / "bad.yaml").write_text("data_dir: /nowhere\nworkers: zero\n")
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "--config", str(tmp_path / "bad.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "workers" in proc.stderr
    assert main  # the console entry point exists


def test_resume_with_another_baseline_is_refused(tmp_path, tiny_world, fake_trainer):
    import pytest

    from cambrian.errors import ConfigError

    cfg = parse_evolve_config(cfg_dict(tmp_path, tiny_world, fake_trainer, personas=["reward"]), env={})
    run_evolution(cfg)
    changed = cfg.model_copy(update={"baseline_overrides": {"training": {"epochs": 3}}})
    with pytest.raises(ConfigError, match="another baseline"):
        Evolution(changed)
