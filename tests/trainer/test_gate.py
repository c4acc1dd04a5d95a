"""The validation gate fails broken candidates in seconds, naming the stage and the reason."""

import json
import subprocess
import sys
import time

import pytest
import yaml

from cambrian.errors import GateError
from cambrian.trainer.delta import Delta, apply_delta
from cambrian.trainer.plugins import check_code
from cambrian.trainer.train import run_gate

GOOD_ARCH = """
class Model(nn.Module):
    def __init__(self, spec, cfg):
        super().__init__()
        self.user = nn.Embedding(spec.n_users, 8)
        self.item = nn.Embedding(spec.n_items, 8)
    def forward(self, batch):
        return (self.user(batch["user"]) * self.item(batch["item"])).sum(-1)
"""


@pytest.mark.parametrize("code, stage, fragment", [
    ("class Model(nn.Module:\n    pass", "parse", "syntax error at line 1"),
    ("import os\nclass Model(nn.Module):\n    pass", "static", "import of 'os'"),
    ("from subprocess import run\nclass Model: pass", "static", "import of 'subprocess'"),
    ("import socket\nclass Model: pass", "static", "import of 'socket'"),
    ("class Model:\n    x = open('/etc/passwd')", "static", "use of 'open'"),
    ("class Model:\n    x = eval('1')", "static", "use of 'eval'"),
    ("class Other(nn.Module):\n    pass", "static", "must define `Model`"),
])
def test_static_checks_reject_honest_mistakes(code, stage, fragment):
    with pytest.raises(GateError, match=fragment) as info:
        check_code(code, "architecture")
    assert info.value.stage == stage


def test_runtime_import_guard_refuses_modules_outside_the_allow_list():
    # Defence in depth behind the AST check: the namespace's __import__ refuses too.
    from cambrian.trainer.plugins import _guarded_import

    with pytest.raises(ImportError, match="not offered"):
        _guarded_import("os")
    assert _guarded_import("math").sqrt(4.0) == 2.0


def _gate(config, world_dir, delta):
    return run_gate(apply_delta(config, delta), world_dir)


def test_plugin_architecture_passes_the_gate(world_dir, quick_config):
    data = _gate(quick_config, world_dir, Delta(component="architecture", code=GOOD_ARCH))
    assert len(data.train) > 0 and len(data.val) > 0


@pytest.mark.parametrize("delta, stage, fragment", [
    (Delta(component="architecture", code="class Model(nn.Module):\n    def __init__(self, spec, cfg):\n"
                                           "        super().__init__()\n        self.l = nn.Linear(2, 3)\n"
                                           "    def forward(self, batch):\n        return self.l(batch['dense'])"),
     "forward_backward", "one logit per row"),
    (Delta(component="architecture", code="class Model(nn.Module):\n    def __init__(self, spec, cfg):\n"
                                           "        super().__init__()\n    def forward(self, batch):\n"
                                           "        return batch['dense'].sum(-1)"),
     "forward_backward", "no trainable parameters"),
    (Delta(component="reward", patch={"label": "no_such_column"}), "reward_sql", "unknown column 'no_such_column'"),
    (Delta(component="reward", patch={"label": "click; DROP TABLE impressions"}), "reward_sql", "does not parse"),
    (Delta(component="reward", patch={"label": "(SELECT 1 FROM read_parquet('/etc/x'))"}), "reward_sql", "subquery"),
    (Delta(component="reward", patch={"label": "CASE WHEN click = 1 THEN 1.0 END"}), "reward_sql", "NULL for"),
    (Delta(component="reward", patch={"label": "CAST(click AS DOUBLE)) AS DOUBLE), (1.0"}), "reward_sql", "does not parse"),
    (Delta(component="architecture", code="class Model(nn.Module):\n    def __init__(self, spec, cfg):\n"
                                           "        super().__init__()\n        self.l = nn.Linear(2, 1)\n"
                                           "    def forward(self, batch):\n        if not self.training:\n"
                                           "            raise ValueError('eval only')\n"
                                           "        return self.l(batch['dense']).squeeze(-1)"),
     "forward_backward", "eval only"),
    (Delta(component="reward", patch={"label": "watch_seconds"}), "reward_sql", "labels in \\[0, 1\\]"),
    (Delta(component="reward", patch={"label": "0.5"}), "reward_sql", "constant"),
    (Delta(component="reward", patch={"label": "click / 0.0"}), "reward_sql", "not finite"),
    (Delta(component="reward", patch={"weight": "-1.0"}), "reward_sql", "non-negative"),
    (Delta(component="optimizer", patch={"name": "NoSuchOptimizer"}), "static", "unknown optimizer"),
    (Delta(component="optimizer", patch={"params": {"bogus_kw": 1}}), "static", "rejected its settings"),
    (Delta(component="architecture", patch={"name": "transformer9000"}), "static", "unknown architecture"),
])
def test_gate_failures_name_stage_and_reason(world_dir, quick_config, delta, stage, fragment):
    with pytest.raises(GateError, match=fragment) as info:
        _gate(quick_config, world_dir, delta)
    assert info.value.stage == stage


def test_watch_time_reward_passes_with_mse(world_dir, quick_config):
    _gate(quick_config, world_dir, Delta(component="reward", patch={"label": "watch_seconds / 60.0", "loss": "mse"}))


def test_cli_broken_delta_fails_in_the_gate_within_seconds(world_dir, tmp_path):
    delta = tmp_path / "delta.yaml"
    delta.write_text(yaml.safe_dump({"component": "architecture", "code": "import socket\nclass Model: pass\n"}))
    out = tmp_path / "run"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--data", str(world_dir), "--delta", str(delta),
                           "--out", str(out)], capture_output=True, text=True)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert "validation gate failed at static" in proc.stderr and "socket" in proc.stderr
    error = json.loads((out / "error.json").read_text())
    assert error["stage"] == "static"
    assert not (out / "bundle").exists() and not (out / "metrics.json").exists()
    assert elapsed < 30, f"the gate took {elapsed:.1f}s"


def test_cli_invalid_delta_file_exits_2(world_dir, tmp_path):
    delta = tmp_path / "delta.yaml"
    delta.write_text("component: optimizer\npatch: {lr: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--data", str(world_dir), "--delta", str(delta),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "optimizer.lr" in proc.stderr


def test_the_optimizer_names_are_torch_optims_own():
    """OPTIMIZER_NAMES lets the trusted static stage refuse a misspelt name without importing torch; it must
    be exactly the installed torch.optim's optimizer classes."""
    import inspect

    import torch

    from cambrian.trainer.config import OPTIMIZER_NAMES

    installed = {n for n, c in vars(torch.optim).items()
                 if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}
    assert set(OPTIMIZER_NAMES) == installed


@pytest.mark.parametrize("delta,fragment", [
    (Delta(component="optimizer", patch={"name": "adamw"}), "did you mean AdamW"),
    (Delta(component="optimizer", patch={"name": "Adamm"}), "use a torch.optim class"),
    (Delta(component="architecture", patch={"name": "transformer9000"}), "unknown architecture"),
])
def test_unknown_names_are_refused_in_the_trusted_static_stage(quick_config, delta, fragment):
    """Before: they reached build_optimizer/build_model, inside the sandbox, after its start and a torch import."""
    from cambrian.trainer.codecheck import static_checks

    with pytest.raises(GateError, match=fragment) as info:
        static_checks(apply_delta(quick_config, delta))
    assert info.value.stage == "static"
