"""The previous settings formats at the CLI (operator/legacy.py): `cambrian evolve --config evolve.yaml` runs
the equivalent Evolution on the LocalDriver or refuses, with the field to use, a setting it has no field for;
`cambrian rollout --config` is refused. The loop itself (resume after a kill, nothing trained twice) is
tests/local/test_local_driver.py and tests/reliability/test_offline_faults.py."""

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner


def cfg_dict(tmp_path, world, trainer, **over):
    d = {"data_dir": str(world), "run_dir": str(tmp_path / "run"), "generations": 1, "workers": 2,
         "train_command": trainer, "limits": {"wall_seconds": 30},
         "noise": {"baseline_seeds": 2, "confirm_top": 1, "confirm_seeds": 1}}
    d.update(over)
    return d


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


def test_cli_evolve_config_checks_the_data_before_writing_the_run_folder(tmp_path):
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump({"data_dir": str(tmp_path / "nowhere"), "run_dir": "run",
                                                          "budgets": {"max_evaluations": 3}}))
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "--config", str(tmp_path / "evolve.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a data directory" in proc.stderr.splitlines()[0], proc.stderr
    assert not (tmp_path / "run").exists()
