"""Train one configuration Φ on a data directory: gate, train with torch, score, write the bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from cambrian.errors import GateError, TrainingError
from cambrian.trainer.bundle import save_bundle
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import Dataset, Split, load_dataset
from cambrian.trainer.gate import batch_tensors, forward_backward, static_checks, weighted_loss
from cambrian.trainer.metrics import proxy_metrics
from cambrian.trainer.models import build_model, build_optimizer

SCHEMA_VERSION = 1
EVAL_BATCH = 65536


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is cuda but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def run_gate(config: ModelConfig, data_dir: str | Path) -> tuple[Dataset, torch.device]:
    """All gate stages; loading the dataset evaluates the reward SQL (stage reward_sql)."""
    static_checks(config)
    data = load_dataset(data_dir, config)
    device = pick_device(config.training.device)
    if device.type == "cpu" and config.training.cpu_threads:
        torch.set_num_threads(config.training.cpu_threads)
    forward_backward(config, data, device)
    return data, device


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(split), EVAL_BATCH):
        index = np.arange(start, min(start + EVAL_BATCH, len(split)))
        out.append(model(batch_tensors(split, index, device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def fit(config: ModelConfig, data: Dataset, device: torch.device) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(config.training.seed)
    model = build_model(data.spec, config.architecture).to(device)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    train = data.train
    label = torch.from_numpy(train.label).to(device)
    weight = torch.from_numpy(train.weight).to(device)
    gen = torch.Generator().manual_seed(config.training.seed)
    bs = config.training.batch_size
    started = time.perf_counter()
    for epoch in range(config.training.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen).numpy()
        for start in range(0, len(order), bs):
            index = order[start:start + bs]
            logits = model(batch_tensors(train, index, device))
            idx = torch.from_numpy(index).to(device)
            loss = weighted_loss(config.reward.loss, logits.float(), label[idx], weight[idx])
            if not torch.isfinite(loss):
                raise TrainingError(f"the training loss diverged (value {loss.item()}) in epoch {epoch + 1}",
                                    hint="lower optimizer.lr or add training.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.training.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.grad_clip)
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - started


def evaluate(config: ModelConfig, model: torch.nn.Module, data: Dataset, device: torch.device) -> dict:
    scores = predict(model, data.val, device)
    if not np.isfinite(scores).all():
        raise TrainingError("the trained model produces non-finite scores on the validation days")
    val_loss = weighted_loss(config.reward.loss, torch.from_numpy(scores), torch.from_numpy(data.val.label),
                             torch.from_numpy(data.val.weight)).item()
    return {"val_loss": float(val_loss), **proxy_metrics(scores, data.val.signals, config.reward.long_watch_seconds)}


def train(config: ModelConfig, data_dir: str | Path, out_dir: str | Path) -> dict:
    """Gate, train, evaluate; write metrics.json and bundle/ under out_dir. Returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, device = run_gate(config, data_dir)
    try:
        model, seconds = fit(config, data, device)
    except (GateError, TrainingError):
        raise
    except RuntimeError as exc:  # e.g. shape errors that only show on later batches, out of memory
        raise TrainingError(f"training failed: {exc}") from None
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "config_fingerprint": config.fingerprint(),
        **evaluate(config, model, data, device),
        "train_seconds": round(seconds, 4),
        "examples_per_second": round(len(data.train) * config.training.epochs / max(seconds, 1e-9), 1),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "epochs": config.training.epochs,
        "reward_loss": config.reward.loss,
        "device": device.type,
    }
    save_bundle(out / "bundle", model, config, data.spec, data.catalogue, metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
