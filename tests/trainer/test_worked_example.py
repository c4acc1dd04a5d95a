"""README, "Bring your own data" > "Worked example", run as written: MovieLens-100k as published in an S3 bucket
(moto's server on loopback), checked and evolved offline through its declaration with the README's commands and
manifests/examples/movielens-evolution.yaml. The online half of the example (metrics as SQL in PostgreSQL) is
tests/local/test_local_driver.py::test_a_rollout_decides_on_sql_metrics_over_the_simulated_users_days_in_postgresql."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cambrian.testing import dataservers

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "movielens-evolution.yaml"


def readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Worked example: MovieLens-100k from a bucket"):]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def commands(block: str) -> list[list[str]]:
    """The `cambrian ...` lines of the README's block (comments and the environment lines dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("cambrian ")]


def test_the_worked_example_names_the_committed_manifest_and_its_declaration():
    block = readme_example()
    assert [c[:2] for c in commands(block)] == [["cambrian", "data"], ["cambrian", "evolve"], ["cambrian", "report"]]
    evo = yaml.safe_load(EXAMPLE.read_text())
    assert evo["spec"]["data"] == {"source": {"uri": "s3://lake/movielens", "secretRef": {"name": "lake"}},
                                   "declaration": "movielens-100k"}
    assert "manifests/examples/movielens-evolution.yaml" in block


@pytest.mark.slow  # four real training runs on MovieLens (~2-4 min)
@pytest.mark.timeout(1200)
def test_the_worked_example_runs_as_written(tmp_path):
    if dataservers.moto_server() is None:
        pytest.skip("moto_server not found: scripts/setup.sh installs it")
    from cambrian.trainer.movielens import movielens_files

    with dataservers.moto_s3() as s3:
        s3.upload({f"movielens/{path.name}": path for path in movielens_files().values()})  # the README's `aws s3 cp`
        env = {**os.environ, **s3.env, "OMP_NUM_THREADS": "1"}
        outputs = []
        for cmd in commands(readme_example()):
            args = [str(REPO / a) if a.startswith("manifests/") else a for a in cmd[1:]]  # run in tmp_path
            proc = subprocess.run([sys.executable, "-m", "cambrian.cli", *args, *(["--json"] if cmd[1] == "evolve" else [])],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1000)
            assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
            outputs.append(proc.stdout)
    assert "passes the movielens_100k declaration" in outputs[0]
    report = json.loads(outputs[1])  # offline only: the driver stops at its simulated-time limit, budget spent
    assert report["reason"].startswith(("every Evolution is done", "stopped at the simulated-time limit")), report
    from cambrian.operator.localstore import LocalStore

    store = LocalStore(tmp_path / "ml")
    (evo,) = store.list("evolutions")
    baseline = evo["status"]["baselineRuns"]
    assert len(baseline) == 2
    for run in baseline:  # MovieLens's own proxies, on the 3,660 held-out ratings of its last 14 days
        assert set(run["metrics"]) >= {"val_loss", "auc", "rating_corr"} and "return_corr" not in run["metrics"]
        assert run["metrics"]["n_val"] == 3660 and 0.5 < run["metrics"]["auc"] < 1
    scored = [h for h in store.list("hypotheses") if h["status"].get("phase") in ("Scored", "Live", "Launched")]
    assert scored and all(set(h["status"]["proxyMetrics"]) >= {"auc", "rating_corr"} for h in scored)
    assert (tmp_path / "ml" / "report" / "report.html").is_file()
