"""Data-parallel training on PyTorch's own distributed runtime: torchrun's elastic agent, DDP, gloo or NCCL.

Cambrian builds no distribution of its own. With `workers > 1`:
- the trusted process writes the training split as one Parquet shard file per worker
  (`train-00001-of-00004.parquet`, rows dealt round-robin, cut to equal length so that every worker takes the
  same number of steps), and each worker streams only its own file's row groups (trainer/rows.py);
- inside the sandbox, the contained launcher (trainer/contained.py `launch`) runs torchrun's elastic agent
  in-process, which starts the workers (`contained.py worker`); each reads only its own shard, wraps the
  candidate's model in DistributedDataParallel (gradients all-reduced) and takes `ceil(batch_size / world)`
  rows a step, so the effective batch stays training.batch_size;
- global rank 0 writes a checkpoint (model, optimizer, position in the data) at every epoch's end and every
  `checkpoint_seconds`; a worker that dies makes the agent restart the whole local group (`max_restarts`),
  and every worker resumes from the last checkpoint instead of from scratch;
- rank 0 alone exports the model; the trusted scorer computes the metrics exactly as for one process.

Locally all workers share one sandbox (one network namespace with only a loopback interface), so they
rendezvous on 127.0.0.1 and reach nothing else. In a cluster each pod is one torchrun node of a gang
(operator/platform/gang.py) that meets at a Service in front of the Job's first pod.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from cambrian.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
RANK0_RESULT = "rank0.json"
DEFAULT_PORT = 29400
MAX_WORKERS = 256


@dataclass(frozen=True)
class Distribution:
    """How many workers train one configuration, and where they meet (`cambrian train --workers ...`)."""

    workers: int = 1  # worker processes in all, over every node
    nodes: int = 1  # torchrun nodes (pods); workers / nodes processes each
    rdzv_endpoint: str | None = None  # host:port of the rendezvous; None: this machine's loopback
    rdzv_id: str = "cambrian"
    max_restarts: int = 3  # group restarts after a lost worker, each from the last checkpoint
    checkpoint_seconds: float = 300.0
    node_index: int | None = None  # a gang's pod index; node 0 hosts the rendezvous store
    local_addr: str | None = None  # this node's address for the other nodes (default: its host name)
    collective_timeout_seconds: float = 600.0  # a collective or store wait on a silent peer fails, not hangs

    def __post_init__(self):
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, not {self.workers}")
        if self.nodes < 1 or self.workers % self.nodes:
            raise ConfigError(f"--workers {self.workers} must be a multiple of --nodes {self.nodes}")
        if self.nodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("--nodes above 1 needs --rdzv-endpoint HOST:PORT (the first node's address)")
        if self.max_restarts < 0 or self.checkpoint_seconds <= 0 or self.collective_timeout_seconds <= 0:
            raise ConfigError("--max-restarts must be >= 0 and the checkpoint interval and collective timeout positive")

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    @property
    def per_node(self) -> int:
        return self.workers // self.nodes


# ---- the trusted side: shards ---------------------------------------------------------------------------

def shard_name(rank: int, world: int) -> str:
    return f"train-{rank:05d}-of-{world:05d}.parquet"


def shard_of(index: np.ndarray, n: int, world: int) -> np.ndarray:
    """The worker whose shard each of n training rows goes to (by its index among them), -1 for none: dealt
    round-robin (each shard spans the whole time range), cut to the same length so that no worker waits in an
    all-reduce the others never reach."""
    per = n // world
    if per == 0:
        raise ConfigError(f"{n} training rows cannot be split over {world} workers")
    index = np.asarray(index)
    return np.where(index < per * world, index % world, -1)


# ---- inside the sandbox: the launcher -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_args(dist: Distribution, worker_argv: list[str], contained: bool) -> list[str]:
    """torchrun's own arguments: elastic c10d rendezvous, then `python -m cambrian.trainer.contained worker`.
    Contained, the sandbox's network namespace is private, so a fixed port on its loopback cannot collide."""
    if dist.rdzv_endpoint:
        endpoint, local_addr = dist.rdzv_endpoint, dist.local_addr
    else:
        endpoint = f"127.0.0.1:{DEFAULT_PORT if contained else free_port()}"
        local_addr = "127.0.0.1"  # the sandbox has no resolvable host name
    args = ["--nnodes", str(dist.nodes), "--nproc-per-node", str(dist.per_node), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", dist.rdzv_id, "--max-restarts", str(dist.max_restarts),
            "--monitor-interval", "0.5"]
    if local_addr:
        args += ["--local-addr", local_addr]
    if dist.node_index is not None:  # the endpoint is a Service's address, which no node recognizes as its own
        args += ["--rdzv-conf", f"is_host={'true' if dist.node_index == 0 else 'false'}"]
    return [*args, "-m", "cambrian.trainer.contained", *worker_argv]


def loopback_environment() -> dict[str, str]:
    """Collectives on the loopback: the sandbox resolves no host name, and has no other interface anyway."""
    return {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


def agent_environment() -> dict[str, str]:
    """A fresh store for every attempt of the group. By default torchrun's agent shares one store server with
    its workers across restarts, and the workers' keys carry no attempt prefix: a restarted rank then read its
    peer's address from the attempt before ("connection refused") or waited on a barrier count the dead
    attempt had left, until the wall-time limit (seen 1 in 4 runs of the worker-kill test). With the opt-out,
    the rendezvous gives every round a new address and port, and global rank 0 hosts that round's store."""
    return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


# What gloo and NCCL say when a peer's connection breaks (they raise plain RuntimeErrors).
_PEER_LOST = ("gloo/transport", "connection reset by peer", "connection closed by peer", "broken pipe", "nccl")


def communication_failure(exc: BaseException) -> bool:
    """Whether a collective failed because a peer went away (restart the group) rather than the candidate's
    code (report it). A candidate that raises such a message itself gains at most max_restarts retries."""
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError)
                                               and any(m in str(exc).lower() for m in _PEER_LOST))


# ---- inside the sandbox: one worker ---------------------------------------------------------------------

@dataclass
class Worker:
    """This process's place in the group (torchrun's environment) and where the group keeps its checkpoint."""

    rank: int
    world: int
    local_rank: int
    restart: int
    scratch: Path
    checkpoint_seconds: float = 300.0
    collective_timeout_seconds: float = 600.0

    @classmethod
    def from_environment(cls, scratch: Path, dist: Distribution) -> "Worker":
        env = os.environ
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                   int(env.get("TORCHELASTIC_RESTART_COUNT", "0")), scratch, dist.checkpoint_seconds,
                   dist.collective_timeout_seconds)

    @property
    def checkpoint(self) -> Path:
        return self.scratch / CHECKPOINT

    def batch(self, batch_size: int) -> int:
        return max(1, math.ceil(batch_size / self.world))

    def start(self, device) -> None:
        import torch
        import torch.distributed as dist

        # NCCL wants a GPU of its own per worker; workers sharing one (more workers than GPUs) use gloo
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        gpu_each = device.type == "cuda" and torch.cuda.device_count() >= local_world
        backend = "nccl" if gpu_each else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=self.collective_timeout_seconds))

    def wrap(self, model, device):
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def stop(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # checkpoints: written by rank 0 only (every rank holds the same weights after the all-reduce)
    def save(self, model, optimizer, epoch: int, step: int, extra: dict) -> None:
        import torch

        if self.rank != 0:
            return
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                    "world": self.world, "extra": extra, "saved_at": time.time()}, tmp)
        os.replace(tmp, self.checkpoint)  # a worker killed mid-write leaves the previous checkpoint whole

    def load(self, model, optimizer, device) -> dict | None:
        """The last checkpoint into model and optimizer; None on a first start. It was written by the same
        candidate's code in this same sandbox, so unpickling it crosses no trust boundary."""
        import torch

        if not self.checkpoint.is_file():
            return None
        state = torch.load(self.checkpoint, map_location=device, weights_only=False)
        if state.get("world") != self.world:
            return None  # another group's split of the data: positions would not line up
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return state

    def write_result(self, result: dict) -> None:
        if self.rank == 0:
            (self.scratch / RANK0_RESULT).write_text(json.dumps(result))
