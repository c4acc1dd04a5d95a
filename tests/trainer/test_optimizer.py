"""build_optimizer: torch's fused step by default where torch has one for Φ's optimizer and can run it, Φ's own
choice where it made one, and a step that fails says how to opt out."""

import pytest
import torch
from torch import nn

from cambrian.errors import GateError
from cambrian.trainer.config import ModelConfig, OptimizerConfig
from cambrian.trainer.delta import Delta, apply_delta
from cambrian.trainer.features import FeatureSpec
from cambrian.trainer.models import build_model, build_optimizer, fused_hint
from cambrian.trainer.train import run_gate

SPEC = FeatureSpec(20, 30)


def _optimizer(name: str, model: nn.Module | None = None, **params):
    model = model or build_model(SPEC, ModelConfig().architecture)
    return build_optimizer(model, OptimizerConfig(name=name, lr=0.01, params=params))


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_an_optimizer_torch_can_fuse_is_fused_unless_phi_chose(name):
    fused = _optimizer(name)
    assert fused.defaults["fused"] is True and fused_hint(fused)
    for choice in ({"fused": False}, {"foreach": True}):  # Φ's own choice stands, and no hint blames Cambrian
        own = _optimizer(name, **choice)
        assert not own.defaults["fused"] and not fused_hint(own)
    assert _optimizer(name, foreach=True).defaults["foreach"] is True


def test_an_optimizer_without_a_fused_step_is_torchs_default():
    rmsprop = _optimizer("RMSprop")
    assert "fused" not in rmsprop.defaults and not fused_hint(rmsprop)


def test_the_fused_step_matches_the_default_one_to_float_rounding():
    torch.manual_seed(0)
    a = build_model(SPEC, ModelConfig().architecture)
    b = build_model(SPEC, ModelConfig().architecture)
    b.load_state_dict(a.state_dict())
    batch = {"user": torch.arange(8) % 20, "item": torch.arange(8) % 30, "dense": torch.zeros(8, 0)}
    for model, optimizer in ((a, _optimizer("Adam", a)), (b, _optimizer("Adam", b, fused=False))):
        for _ in range(5):
            optimizer.zero_grad()
            model(batch).square().mean().backward()
            optimizer.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class SparseEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.item = nn.Embedding(30, 4, sparse=True)

    def forward(self, batch):
        return self.item(batch["item"]).sum(-1)


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_an_embedding_declared_sparse_keeps_the_unfused_step_that_takes_sparse_gradients(name):
    model = SparseEmbeddings()
    optimizer = _optimizer(name, model)
    assert not optimizer.defaults["fused"]
    model({"item": torch.tensor([1, 2, 2])}).sum().backward()
    assert model.item.weight.grad.is_sparse
    optimizer.step()  # torch's fused SGD and Adagrad refuse sparse gradients


FUNCTIONAL_SPARSE = """
class Model(nn.Module):
    def __init__(self, spec, cfg):
        super().__init__()
        self.item = nn.Parameter(torch.zeros(spec.n_items, 4))
    def forward(self, batch):
        return nn.functional.embedding(batch["item"], self.item, sparse=True).sum(-1)
"""


def test_sparse_gradients_no_module_declares_fail_the_gate_saying_how_to_opt_out(world_dir, quick_config):
    config = apply_delta(quick_config, Delta(component="architecture", code=FUNCTIONAL_SPARSE))
    config.optimizer.name = "SGD"
    with pytest.raises(GateError, match="set optimizer.params.fused: false") as info:
        run_gate(config, world_dir)
    assert info.value.stage == "forward_backward" and "sparse" in str(info.value)
    config.optimizer.params = {"fused": False}
    assert len(run_gate(config, world_dir).val) > 0
