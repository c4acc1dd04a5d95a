"""Issue 20: `cambrian evolve --config` piped to a file prints the complete hypotheses table (every column).
Since issue 12 the old settings run as the equivalent Evolution on the LocalDriver, so the table is the
driver's (cambrian.operator.local_cli.print_hypotheses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


def test_evolve_to_a_pipe_prints_the_whole_hypotheses_table_tab_separated(tmp_path, tiny_world, fake_trainer):
    cfg = {"data_dir": str(tiny_world), "run_dir": str(tmp_path / "run"), "workers": 2,
           "train_command": fake_trainer, "limits": {"wall_seconds": 30}, "personas": ["reward"],
           "noise": {"baseline_seeds": 2, "confirm_seeds": 1}, "budgets": {"max_evaluations": 4}}
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(Path(sys.executable).with_name("cambrian")), "evolve", "--config",
                           str(tmp_path / "evolve.yaml")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("hypothesis\tpersona\tphase\tmetric\tscore\t")), None)
    assert head is not None, proc.stdout
    rows = [dict(zip(lines[head].split("\t"), line.split("\t"))) for line in lines[head + 1:] if "\t" in line]
    scored = [r for r in rows if r["phase"] == "Scored"]
    assert scored and all(r["persona"] == "reward" and r["metric"] and r["score"] and r["why"] for r in scored), rows
    assert "┃" not in proc.stdout  # no rich box table squeezed into 80 columns
