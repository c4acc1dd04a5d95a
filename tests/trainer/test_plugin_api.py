"""The loosened plugin interface (issue 13, Deliver 3): torch in full, the trainer's building blocks through
cambrian.trainer.plugin_api, and deltas that patch the settings of more than one component."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from cambrian.errors import ConfigError
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import Delta, apply_delta, parse_delta
from cambrian.trainer.plugins import check_code
from cambrian.trainer.train import train

CLIPPING_OPTIMIZER = """
import torch.nn.utils

class ClippedSGD(torch.optim.SGD):
    # clips its own gradients before every step (what the static gate refused as `utils` before)
    def __init__(self, params, lr, max_norm):
        params = list(params)
        super().__init__(params, lr=lr, momentum=0.9)
        self._all = params
        self._max_norm = max_norm

    def step(self, closure=None):
        torch.nn.utils.clip_grad_norm_(self._all, self._max_norm)
        return super().step(closure)

def build_optimizer(params, cfg):
    return ClippedSGD(params, lr=cfg.lr * 10, max_norm=1.0)
"""

API_MODEL = """
from cambrian.trainer.plugin_api import FieldEmbeddings, fm_interaction, mlp

class Model(nn.Module):
    def __init__(self, spec, cfg):
        super().__init__()
        self.emb = FieldEmbeddings(spec, cfg.embedding_dim, cfg.embedding_init_std)
        self.head = mlp([spec.n_fields * cfg.embedding_dim, *cfg.hidden], cfg.activation, cfg.dropout)
        self.norm = torch.nn.utils.parametrizations.weight_norm(nn.Linear(1, 1))

    def forward(self, batch):
        e = self.emb(batch)
        return self.head(e.flatten(1)).squeeze(-1) + self.norm(fm_interaction(e).unsqueeze(-1)).squeeze(-1)
"""


@pytest.mark.parametrize("code, component", [
    (CLIPPING_OPTIMIZER, "optimizer"),
    (API_MODEL, "architecture"),
    ("import torch.nn.functional as G\nclass Model(nn.Module):\n    def __init__(self, spec, cfg):\n"
     "        super().__init__()\n        self._cache = {}\n        self.lin = nn.Linear(2, 1)\n"
     "    def forward(self, batch):\n        return G.silu(self.lin(batch['dense'])).squeeze(-1)\n", "architecture"),
])
def test_honest_code_using_torch_in_full_passes_the_static_gate(code, component):
    check_code(code, component)


def test_a_plugin_built_from_the_plugin_api_with_torch_utils_trains_and_exports(world_dir, quick_config, tmp_path):
    cfg = apply_delta(quick_config, Delta(component="architecture", code=API_MODEL))
    cfg = apply_delta(cfg, Delta(component="optimizer", code=CLIPPING_OPTIMIZER))
    cfg.training.epochs = 1
    metrics = train(cfg, world_dir, tmp_path)
    assert 0.5 < metrics["auc"] < 1.0 and metrics["sandbox"] == "bwrap"
    assert (tmp_path / "bundle" / "model.pt2").is_file()


PAPER_DELTA = {"component": "optimizer", "patch": {"name": "AdamW", "lr": 0.002},
               "also": {"training": {"grad_clip": 0.5}}}


def test_a_delta_patches_the_settings_of_more_than_one_component():
    delta = parse_delta(PAPER_DELTA)
    cfg = apply_delta(ModelConfig(), delta)
    assert cfg.optimizer.name == "AdamW" and cfg.optimizer.lr == 0.002 and cfg.training.grad_clip == 0.5
    assert "optimizer: " in delta.summary() and "training: grad_clip=0.5" in delta.summary()
    # a single-component delta serializes and hashes as it did before `also` existed
    plain = parse_delta({"component": "optimizer", "patch": {"lr": 0.01}})
    assert "also" not in plain.model_dump() and plain.canonical_json() == \
        '{"code":null,"component":"optimizer","patch":{"lr":0.01}}'
    assert delta.model_dump()["also"] == {"training": {"grad_clip": 0.5}}


@pytest.mark.parametrize("data, fragment", [
    ({**PAPER_DELTA, "also": {"optimizer": {"lr": 0.1}}}, "also.optimizer: put changes of the delta's own component"),
    ({**PAPER_DELTA, "also": {"training": {}}}, "empty patch"),
    ({**PAPER_DELTA, "also": {"training": {"code": "x"}}}, "plugin code goes only"),
    ({**PAPER_DELTA, "also": {"trainer": {"epochs": 1}}}, "also.trainer"),
    ({**PAPER_DELTA, "also": {"training": {"lr": 0.1}}}, "also.training.lr is not a setting of component training"),
])
def test_bad_also_patches_name_the_field(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_delta(data)


def test_the_paper_delta_trains_through_the_cli_with_clipping_on(world_dir, tmp_path):
    (tmp_path / "delta.yaml").write_text(yaml.safe_dump(PAPER_DELTA))
    (tmp_path / "config.json").write_text(json.dumps({"training": {"epochs": 1}}))
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--data", str(world_dir), "--out",
                           str(tmp_path / "run"), "--config", str(tmp_path / "config.json"), "--delta",
                           str(tmp_path / "delta.yaml"), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "grad_clip_steps_clipped" in metrics and metrics["max_grad_norm"] > 0  # training.grad_clip acted
    with open(tmp_path / "run" / "bundle" / "bundle.json") as f:
        config = json.load(f)["config"]
    assert config["optimizer"]["name"] == "AdamW" and config["training"]["grad_clip"] == 0.5


def test_a_hypothesis_carries_the_other_components_patches_to_the_trainer():
    """The cluster path: spec.delta.also of a Hypothesis reaches the trainer's delta (views and the API model)."""
    from cambrian.operator.api import HypothesisSpec
    from cambrian.operator.reconcile.views import hypothesis_view

    spec = {"evolutionRef": {"name": "e"}, "component": "optimizer", "explanation": "AdamW needs clipping",
            "delta": {"patch": {"name": "AdamW"}, "also": {"training": {"grad_clip": 0.5}}}}
    delta = HypothesisSpec.model_validate(spec).trainer_delta()
    assert delta.also == {"training": {"grad_clip": 0.5}}
    view = hypothesis_view({"metadata": {"name": "h"}, "spec": spec})
    cfg = apply_delta(ModelConfig(), parse_delta(view.delta))
    assert cfg.optimizer.name == "AdamW" and cfg.training.grad_clip == 0.5
    with pytest.raises(ValueError, match="also"):
        HypothesisSpec.model_validate({**spec, "delta": {"patch": {"name": "AdamW"}, "also": {"trainer": {"x": 1}}}})
