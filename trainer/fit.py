"""Inside the sandbox: the training loop and the held-out predictions (called by trainer/contained.py).

The trusted side (trainer/train.py: data, scoring, the bundle) never imports this module, nor torch: only the
contained steps, which run the candidate's code or its exported program, pay torch's import and memory.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cambrian.errors import TrainingError
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.distributed import Worker
from cambrian.trainer.gate import batch_tensors, weighted_loss
from cambrian.trainer.models import build_model, build_optimizer, fused_hint
from cambrian.trainer.splits import Split, TrainingSet

EVAL_BATCH = 65536


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is cuda but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@torch.no_grad()
def predict(model, split: Split, device: torch.device, exported: bool = False, inputs: tuple[str, ...] = ()) -> np.ndarray:
    """Scores of a dict-batch model (in eval mode) or of an exported program (positional tensors: `inputs`, the
    spec's input names)."""
    if not exported:
        model.eval()
    out = []
    for start in range(0, len(split), EVAL_BATCH):
        batch = batch_tensors(split, np.arange(start, min(start + EVAL_BATCH, len(split))), device)
        scores = model(*(batch[k] for k in inputs)) if exported else model(batch)
        out.append(scores.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


# How often fit reads back whether the loss diverged (each read waits for the GPU's queued steps).
DIVERGENCE_CHECK_STEPS = 64


def fit(config: ModelConfig, data: TrainingSet, device: torch.device,
        stats: dict | None = None, worker: Worker | None = None) -> tuple[torch.nn.Module, float]:
    """Train; with `stats`, also count the optimizer steps whose gradients training.grad_clip cut. With a
    `worker` (trainer/distributed.py), `data.train` is this worker's shard: the model is wrapped in DDP, each
    step takes its share of training.batch_size, and rank 0 checkpoints so that a restarted group resumes."""
    torch.manual_seed(config.training.seed)
    model = build_model(data.spec, config.architecture).to(device)
    optimizer = build_optimizer(model, config.optimizer)
    train = data.train  # a Split in memory or a RowGroupStream (trainer/rows.py): the same batches(...)
    seed = config.training.seed
    bs = worker.batch(config.training.batch_size) if worker else config.training.batch_size
    clip = config.training.grad_clip
    # kept on the device: reading a norm or the loss back every step would stall a GPU
    clipped = torch.zeros((), dtype=torch.int64, device=device)
    diverged = torch.zeros((), dtype=torch.bool, device=device)
    largest_norm = torch.zeros((), device=device)
    steps = 0
    first_epoch, skip = 0, 0
    resumed = worker.load(model, optimizer, device) if worker else None
    if resumed:
        first_epoch, skip = resumed["epoch"], resumed["step"]
        steps, extra = resumed["extra"]["steps"], resumed["extra"]
        clipped.fill_(extra["clipped"])
        largest_norm.fill_(extra["largest_norm"])
        if stats is not None:
            stats["resumed_from"] = {"epoch": first_epoch, "step": skip, "restart": worker.restart}
    trained = worker.wrap(model, device) if worker else model
    last_save = time.monotonic()

    def checkpoint(epoch: int, step: int) -> None:
        refuse_divergence(epoch)  # never keep diverged weights
        worker.save(model, optimizer, epoch, step, {"steps": steps, "clipped": int(clipped.item()),
                                                    "largest_norm": float(largest_norm.item())})

    def refuse_divergence(epoch: int) -> None:
        if diverged.item():
            raise TrainingError(f"the training loss diverged (became infinite or NaN) in epoch {epoch + 1}",
                                hint="lower optimizer.lr or add training.grad_clip")

    started = time.perf_counter()
    for epoch in range(first_epoch, config.training.epochs):
        # every epoch's order comes from (seed, epoch) alone, so a resumed run replays the same batches
        trained.train()
        start = skip if epoch == first_epoch else 0
        for step, (features, label, weight) in enumerate(train.batches(epoch, bs, seed, start, device), start=start):
            logits = trained(features)  # the batch comes cut on the device (tensors)
            loss = weighted_loss(config.reward.loss, logits.float(), label, weight)
            diverged |= ~torch.isfinite(loss.detach())
            if step % DIVERGENCE_CHECK_STEPS == DIVERGENCE_CHECK_STEPS - 1:
                refuse_divergence(epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).to(device).float()
                clipped += (norm > clip).to(torch.int64)
                largest_norm = torch.maximum(largest_norm, norm)
                steps += 1
            try:
                optimizer.step()
            except Exception as exc:  # noqa: BLE001 - the candidate's optimizer
                raise TrainingError(f"the optimizer's step failed in epoch {epoch + 1}: {type(exc).__name__}: {exc}"
                                    f"{fused_hint(optimizer)}") from None
            if worker and time.monotonic() - last_save > worker.checkpoint_seconds:
                checkpoint(epoch, step + 1)
                last_save = time.monotonic()
        refuse_divergence(epoch)
        if worker:
            checkpoint(epoch + 1, 0)
            last_save = time.monotonic()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if stats is not None and clip:
        stats.update(clip_steps=steps, clipped_steps=int(clipped.item()), max_grad_norm=float(largest_norm.item()))
    return model, seconds
