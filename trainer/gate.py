"""The validation gate: cheap checks that fail a broken candidate in seconds, before any training.

Stages, in order: parse (config and code parse), static (AST checks on plugin code, known names),
reward_sql (labels and weights finite and in range), forward_backward (a tiny forward and backward
pass and one optimizer step on real shapes, then a forward pass in eval mode). Each failure raises GateError
naming its stage. The forward_backward stage runs candidate code, so it runs inside the sandbox
(trainer/contained.py), and the trusted side never imports this module (torch); parse and static run in the trusted
process (trainer/codecheck.py static_checks), reward_sql there too (trainer/data.py).
"""

from __future__ import annotations

import numpy as np
import torch

from cambrian.errors import GateError
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.splits import Split, TrainingSet
from cambrian.trainer.models import build_model, build_optimizer, fused_hint

MAX_PARAMETERS = 20_000_000
GATE_ROWS = 256


def batch_tensors(split: Split, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[index])).to(device) for k, v in split.features.items()}


def weighted_loss(kind: str, logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, label, reduction="none")
        return (weight * per_row).sum() / weight.sum().clamp_min(1e-12)
    return (weight * (logits - label) ** 2).sum() / weight.sum().clamp_min(1e-12)


def forward_backward(config: ModelConfig, data: TrainingSet, device: torch.device) -> None:
    """Stage forward_backward: the candidate model and optimizer work on real shapes."""
    torch.manual_seed(config.training.seed)
    try:
        model = build_model(data.spec, config.architecture).to(device)
    except GateError:
        raise
    except Exception as exc:
        raise GateError("forward_backward", f"building the model failed: {type(exc).__name__}: {exc}") from None
    n_params = sum(p.numel() for p in model.parameters())
    if n_params == 0:
        raise GateError("forward_backward", "the model has no trainable parameters")
    if n_params > MAX_PARAMETERS:
        raise GateError("forward_backward", f"the model has {n_params:,} parameters; the limit is {MAX_PARAMETERS:,}")
    try:
        optimizer = build_optimizer(model, config.optimizer)
    except GateError:
        raise
    except Exception as exc:
        raise GateError("forward_backward", f"building the optimizer failed: {type(exc).__name__}: {exc}") from None
    sample = data.train.head(GATE_ROWS)  # the first rows, whether the split is in memory or streamed
    rows = np.arange(len(sample))
    batch = batch_tensors(sample, rows, device)
    label = torch.from_numpy(sample.label).to(device)
    weight = torch.from_numpy(sample.weight).to(device)
    try:
        logits = model(batch)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(rows),):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise GateError("forward_backward", f"forward must return one logit per row, shape ({len(rows)},); got {shape}")
        loss = weighted_loss(config.reward.loss, logits.float(), label, weight)
        if not torch.isfinite(loss):
            raise GateError("forward_backward", f"the loss is not finite ({loss.item()}) on a first batch")
        optimizer.zero_grad()
        loss.backward()
        if not any(p.grad is not None for p in model.parameters()):
            raise GateError("forward_backward", "no parameter received a gradient")
        try:
            optimizer.step()
        except Exception as exc:  # noqa: BLE001 - the candidate's optimizer or gradients
            raise GateError("forward_backward", f"the optimizer's step failed: {type(exc).__name__}: {exc}"
                            f"{fused_hint(optimizer)}") from None
        # eval mode too: dropout/batch-norm branches that only run there fail here, not after training
        model.eval()
        with torch.no_grad():
            logits = model(batch)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(rows),):
            raise GateError("forward_backward", "in eval mode, forward must return one logit per row")
    except GateError:
        raise
    except Exception as exc:
        raise GateError("forward_backward", describe_model_error(exc, batch)) from None


def describe_model_error(exc: Exception, batch: dict) -> str:
    """One line for an exception from candidate code; a missing batch key gets the keys the model could read."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str) and exc.args[0] not in batch:
        return (f"the model read batch[{exc.args[0]!r}], which does not exist; the batch keys are "
                f"{', '.join(batch)} (see the plugin interface in trainer/plugins.py)")
    return f"{type(exc).__name__}: {exc}"
