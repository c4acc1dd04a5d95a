"""The loop with the built-in proposer and the stand-in trainer: resume after a kill, warm start, CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
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


def test_cli_evolve_config_runs_the_converted_evolution_on_the_driver(tmp_path, tiny_world, fake_trainer, monkeypatch):
    """Issue 12: the old evolve.yaml format becomes an Evolution object (written to RUN_DIR/evolution.yaml)
    that the operator's core runs on the LocalDriver; a re-run resumes and trains nothing twice."""
    from cambrian.cli import app as cli
    from cambrian.operator import api
    from cambrian.operator.localstore import LocalStore

    d = cfg_dict(tmp_path, tiny_world, fake_trainer, personas=["reward"], run_dir="run",
                 noise={"baseline_seeds": 2, "confirm_seeds": 1})
    del d["generations"]
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.setenv("CAMBRIAN_EVOLVE_BUDGETS__MAX_EVALUATIONS", "4")  # the environment overrides still apply
    res = CliRunner().invoke(cli, ["evolve", "--config", str(tmp_path / "evolve.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dir"] == str(tmp_path / "run")  # relative to the YAML file
    assert out["phases"]["Evolution"] == {"evolve": "BudgetExhausted"}
    converted = yaml.safe_load((tmp_path / "run" / "evolution.yaml").read_text())
    spec = api.parse_resource(converted).spec
    assert spec.agent.budgets.evaluations == 4 and spec.agent.personas == ["reward"]
    assert (spec.noise.baseline_seeds, spec.noise.confirm_seeds) == (2, 1) and spec.training.active_deadline == "30s"
    store = LocalStore(tmp_path / "run")
    evo = store.get("evolutions", "default", "evolve")
    assert evo["status"]["spend"]["evaluations"] == 4 and len(evo["status"]["baselineRuns"]) == 2
    assert [h["spec"]["origin"]["persona"] for h in store.list("hypotheses")] and all(
        h["spec"]["component"] == "reward" for h in store.list("hypotheses"))
    jobs = sorted(p.name for p in (tmp_path / "run" / "jobs").iterdir())
    assert len(jobs) == 4  # every evaluation is one training run
    res = CliRunner().invoke(cli, ["evolve", "--config", str(tmp_path / "evolve.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "run" / "jobs").iterdir()) == jobs  # resumed: nothing trained again


@pytest.mark.parametrize("setting, value, field", [
    ("generations", 2, "spec.agent.budgets.evaluations"),
    ("noise", {"confirm_top": 1}, "spec.noise.confirmSeeds"),
    ("provider", {"kind": "gemini", "retries": 2}, "`provider.retries`"),
    ("warm_start", {"k": 2}, "`warm_start`"),
    ("budgets", {"max_train_seconds": 60}, "spec.agent.budgets.evaluations"),
])
def test_cli_evolve_config_refuses_a_setting_without_an_evolution_field(tmp_path, tiny_world, setting, value, field):
    d = {"data_dir": str(tiny_world), "run_dir": str(tmp_path / "run"), "budgets": {"max_evaluations": 4},
         setting: value}
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(d))
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "--config", str(tmp_path / "evolve.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ") and field in first and "has no Evolution field" in first, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()  # refused before anything is written


def test_cli_evolve_config_needs_an_evaluation_budget(tmp_path, tiny_world):
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump({"data_dir": str(tiny_world), "run_dir": str(tmp_path / "r")}))
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "--config", str(tmp_path / "evolve.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "budgets.max_evaluations" in proc.stderr.splitlines()[0], proc.stderr


def test_cli_rollout_config_is_refused_with_the_crd_field(tmp_path):
    (tmp_path / "ro.yaml").write_text(yaml.safe_dump({"name": "x", "world": "w", "control": "a", "treatments": {"b": "b"}}))
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "rollout", "--config", str(tmp_path / "ro.yaml"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert "`treatments`" in first and "spec.treatments[].hypothesisRef" in first and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


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


def test_cli_evolve_config_checks_the_data_before_writing_the_run_folder(tmp_path):
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump({"data_dir": str(tmp_path / "nowhere"), "run_dir": "run",
                                                          "budgets": {"max_evaluations": 3}}))
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "--config", str(tmp_path / "evolve.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a data directory" in proc.stderr.splitlines()[0], proc.stderr
    assert not (tmp_path / "run").exists()
