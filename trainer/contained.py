"""The program that runs candidate code, inside the sandbox (trainer/sandbox.py): train, then export.

    python -m cambrian.trainer.contained {train,gate,predict,host,launch,worker,warm} INPUT SCRATCH [--as-mb N]
        [--cpu-s N] [--fsize-mb N] [--nproc N] [--distribution JSON] [--contained]

INPUT (read-only) holds only what training needs: config.json, train.parquet (the training split's ids,
labels and weights in row groups, trainer/rows.py), catalogue.npz and spec.json. The held-out split and its
labels are never here: the scorer (trainer/score.py) keeps them in another process. The result goes to
SCRATCH: model.pt2 (a torch.export program the scorer can run without any of this Python) and result.json, or
error.json with the stage that failed. Everything written here is untrusted by the parent: it decides the verdict itself.
`launch` trains data-parallel (trainer/distributed.py): it runs torchrun's agent, which starts one `worker`
per shard file (train-RANK-of-WORLD.parquet in INPUT); rank 0 exports. `warm` imports all that first and
then waits on stdin for `train` or `predict` (trainer/warm.py: a pre-started, single-use sandbox).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from cambrian.errors import CambrianError, GateError
from cambrian.trainer.sandbox import apply_limits, load_filter

# Stages the parent accepts from error.json; anything else reads as `training`.
STAGES = ("static", "forward_backward", "training", "export", "sandbox")


class _Stop(Exception):
    def __init__(self, stage: str, reason: str, gate: bool):
        super().__init__(reason)
        self.stage, self.reason, self.gate = stage, reason, gate


class _LostPeer(Exception):
    """A data-parallel collective failed because another worker went away: not the candidate's failure, so it
    leaves no error.json and torchrun's agent restarts the group from the last checkpoint."""


def _stage(stage: str, gate: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one stage; anything it raises, SystemExit and KeyboardInterrupt included (a plugin may not end the
    run quietly), becomes a failure naming the stage."""
    try:
        return fn(*args)
    except _LostPeer:
        raise
    except GateError as exc:
        raise _Stop(exc.stage, exc.reason, True) from None
    except CambrianError as exc:
        raise _Stop(stage, str(exc), gate) from None
    except BaseException as exc:  # noqa: BLE001 - candidate code may raise anything
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, SystemExit):
            what = f"the candidate code called exit ({exc.code!r}) during {stage}"
        raise _Stop(stage, what, gate) from None


def read_input(input_dir: Path, shard: str = "train.parquet"):
    """The config and the training rows: whole, or streamed from their row groups (trainer/rows.py)."""
    from cambrian.trainer.config import ModelConfig
    from cambrian.trainer.splits import TrainingSet
    from cambrian.trainer.features import load_catalogue
    from cambrian.trainer.rows import RowGroupStream

    config = ModelConfig.model_validate_json((input_dir / "config.json").read_text())
    catalogue = load_catalogue(input_dir / "catalogue.npz")
    train = RowGroupStream(input_dir / shard, catalogue, config.training.shuffle_row_groups)
    return config, TrainingSet(catalogue.spec, catalogue, train)


def export_program(model, data, path: Path) -> None:
    from cambrian.trainer.bundle import export_model

    export_model(model, data.spec, data.catalogue, path)


def train(input_dir: Path, scratch: Path, gate_only: bool = False) -> dict:
    import torch

    from cambrian.trainer.gate import forward_backward
    from cambrian.trainer.fit import fit, pick_device

    clock = [time.perf_counter()]
    phases: dict[str, float] = {}  # informational (the benchmark's breakdown of a run): seconds per phase

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        phases[name] = round(clock[-1] - clock[-2], 4)

    config, data = read_input(input_dir)
    device = _stage("training", False, pick_device, config.training.device)
    if device.type == "cpu" and config.training.cpu_threads:
        torch.set_num_threads(config.training.cpu_threads)
    lap("read_input")
    _stage("forward_backward", True, forward_backward, config, data, device)
    lap("gate")
    if gate_only:
        return {"device": device.type}
    clipping: dict = {}
    cpu = time.process_time()
    model, seconds = _stage("training", False, fit, config, data, device, clipping)
    lap("fit")
    # this process's CPU seconds in fit: its wall time also counts what other processes took from its core
    phases["fit_cpu"] = round(time.process_time() - cpu, 4)
    _stage("export", False, export_program, model, data, scratch / "model.pt2")
    lap("export")
    return {"train_seconds": seconds, "device": device.type, "phases": phases, **clipping}


def predict(input_dir: Path, scratch: Path) -> dict:
    """Held-out features in, scores out; runs the exported program only (no candidate Python is imported)."""
    import numpy as np
    import torch

    from cambrian.trainer.bundle import load_program
    from cambrian.trainer.splits import Split
    from cambrian.trainer.fit import predict as predict_split

    torch.set_num_threads(1)
    module = _stage("export", False, load_program, input_dir / "model.pt2")
    with np.load(input_dir / "heldout.npz") as t:
        split = Split({k[2:]: t[k] for k in t.files if k.startswith("f_")}, np.zeros(0, np.float32),
                      np.zeros(0, np.float32), None)
        inputs = tuple(str(x) for x in t["inputs"])
    n = len(next(iter(split.features.values())))
    split.label = np.zeros(n, np.float32)  # only its length is used
    scores = _stage("export", False, predict_split, module, split, torch.device("cpu"), True, inputs)
    np.save(scratch / "predictions.npy", np.asarray(scores, dtype=np.float32), allow_pickle=False)
    return {}


def launch(input_dir: Path, scratch: Path, args: argparse.Namespace) -> dict:
    """Data-parallel training: torchrun's elastic agent, in this process, starts and watches the workers
    (restarting the group from the last checkpoint when one is lost); rank 0's result is the run's."""
    import os

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from cambrian.trainer.distributed import RANK0_RESULT, agent_environment, loopback_environment, torchrun_args

    dist = _distribution(args)
    worker_argv = ["worker", str(input_dir), str(scratch), "--distribution", args.distribution,
                   "--as-mb", str(args.as_mb), "--cpu-s", str(args.cpu_s), "--fsize-mb", str(args.fsize_mb),
                   "--processes", str(args.nproc),
                   *(["--contained"] if args.contained else []), *(["--seccomp"] if args.seccomp else [])]
    os.environ.update(agent_environment())
    if not dist.rdzv_endpoint:
        os.environ.update(loopback_environment())
    try:
        torchrun(torchrun_args(dist, worker_argv, args.contained))
    except ChildFailedError as exc:
        error = _read_json(scratch / "error.json")
        if error.get("stage") in STAGES:
            raise _Stop(error["stage"], str(error.get("reason", "")), bool(error.get("gate"))) from None
        first = next(iter(exc.failures.values()), None)
        raise _Stop("training", f"a worker failed after {dist.max_restarts} restarts "
                                f"(exit {getattr(first, 'exitcode', '?')})", False) from None
    rank0 = _read_json(scratch / RANK0_RESULT)
    return rank0 or {"role": "worker"}  # another node's worker held rank 0: that node has the model


def worker(input_dir: Path, scratch: Path, args: argparse.Namespace) -> dict:
    """One data-parallel worker, started by torchrun: its shard, DDP, checkpoints; rank 0 exports."""
    earlier = _read_json(scratch / "error.json")
    if earlier.get("stage") in STAGES:  # the candidate failed in an earlier attempt: a restart changes nothing,
        # so end before importing torch (each restart then costs about a second, not a torch import per worker)
        raise _Stop(earlier["stage"], str(earlier.get("reason", "")), bool(earlier.get("gate")))
    import torch

    from cambrian.trainer.distributed import Worker, shard_name
    from cambrian.trainer.gate import forward_backward
    from cambrian.trainer.sandbox import forbid_new_processes
    from cambrian.trainer.fit import fit, pick_device

    if args.contained or args.seccomp:  # the agent needed to start processes; the candidate's code may not
        forbid_new_processes()
    dist = _distribution(args)
    me = Worker.from_environment(scratch, dist)
    config, data = read_input(input_dir, shard_name(me.rank, me.world))
    device = _stage("training", False, pick_device, config.training.device)
    if device.type == "cuda":
        device = torch.device("cuda", me.local_rank % torch.cuda.device_count())
    elif config.training.cpu_threads:
        torch.set_num_threads(config.training.cpu_threads)
    _stage("forward_backward", True, forward_backward, config, data, device)
    _in_group(me.start, device)  # meeting the group: a peer lost here restarts it like one lost in training
    stats: dict = {}
    model, seconds = _stage("training", False, _in_group, fit, config, data, device, stats, me)
    if me.rank == 0:
        _stage("export", False, export_program, model, data, scratch / "model.pt2")
    me.write_result({"train_seconds": seconds, "device": device.type, "restarts": me.restart, **stats})
    me.stop()
    return {}


def _in_group(fn: Callable[..., Any], *args: Any) -> Any:
    from cambrian.trainer.distributed import communication_failure

    try:
        return fn(*args)
    except Exception as exc:
        if communication_failure(exc):
            raise _LostPeer(str(exc)) from None
        raise


def _distribution(args: argparse.Namespace):
    from cambrian.trainer.distributed import Distribution

    return Distribution(**json.loads(args.distribution))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def host(input_dir: Path, scratch: Path) -> dict:
    """A bundle folder's program, answering score requests on stdin/stdout until EOF (trainer/host.py)."""
    from cambrian.trainer.host import serve_program

    _stage("export", False, serve_program, input_dir / "model.pt2", input_dir / "features.npz",
           sys.stdin.buffer, sys.stdout.buffer)
    return {}


def warm(input_dir: Path, scratch: Path, args: argparse.Namespace) -> dict:
    """A pre-started sandbox (trainer/warm.py): import what training and predicting need, then wait on stdin
    for the one command it will run (`train` or `predict`); its input folder is filled meanwhile. It serves
    that one command and ends: main() returns after it, and the parent kills its whole tree."""
    import os

    preload()

    print("ready", flush=True)  # stdout: the parent waits for this line before counting the sandbox warm
    os.dup2(2, 1)  # from here on stdout is the log: nothing the candidate prints reaches the parent's pipe
    command = sys.stdin.readline().strip()
    if command not in WARM_COMMANDS:
        raise _Stop("sandbox", f"a warm sandbox was told {command[:40]!r}, not one of {', '.join(WARM_COMMANDS)}", False)
    started = time.perf_counter()
    result = COMMANDS[command](input_dir, scratch, args)
    result["command_seconds"] = time.perf_counter() - started
    return result


def preload() -> None:
    """What `train` and `predict` import and torch's first-use costs, paid before the candidate is known. These
    modules leave pandas, DuckDB and SQL parsing to the trusted side (trainer/splits.py): a warm sandbox is
    started for every step, so each import here is paid twice per candidate."""
    import torch  # noqa: F401

    import cambrian.trainer.bundle  # noqa: F401
    import cambrian.trainer.fit  # noqa: F401
    import cambrian.trainer.gate  # noqa: F401
    import cambrian.trainer.rows  # noqa: F401

    _warm_up()


def _warm_up() -> None:
    """Pay torch's first-use costs with a throw-away model of our own (no candidate code): the first optimizer
    step (about 1.5 s: it imports the compiler stack) and the first export, save and load (in the throughput
    benchmark a candidate's export 0.58 -> 0.36 s, the predictor process 0.64 -> 0.40 s). The export has static
    shapes: a dynamic one leaves a symbolic-shape fake tensor behind in torch's caches, which a cold run's
    candidate would never see (the red-team heap scan reads every array's length); a static one leaves none
    (tests/trainer/test_warm.py). Every run reseeds torch before building its model (gate, fit), so nothing here
    changes its results."""
    import gc
    import tempfile

    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Flatten(), torch.nn.Linear(8, 1))
    x = torch.zeros(4, 2, dtype=torch.int64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), torch.zeros(4)).backward()
    optimizer.step()
    program = torch.export.export(model.eval(), (x,))
    with tempfile.TemporaryDirectory() as tmp:
        torch.export.save(program, f"{tmp}/warm.pt2")
        with torch.no_grad():
            torch.export.load(f"{tmp}/warm.pt2").module()(x)
    del model, optimizer, program
    gc.collect()


COMMANDS = {"train": lambda i, s, a: train(i, s), "gate": lambda i, s, a: train(i, s, gate_only=True),
            "predict": lambda i, s, a: predict(i, s), "host": lambda i, s, a: host(i, s), "launch": launch,
            "worker": worker, "warm": warm}
WARM_COMMANDS = ("train", "predict")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cambrian.trainer.contained")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("input", type=Path)
    parser.add_argument("scratch", type=Path)
    for flag in ("--as-mb", "--cpu-s", "--fsize-mb"):
        parser.add_argument(flag, type=int, default=0)
    # --processes: torchrun's own parser would take --nproc for an abbreviation of its --nproc-per-node
    parser.add_argument("--nproc", "--processes", dest="nproc", type=int, default=0)
    parser.add_argument("--distribution", default="{}", help="launch/worker: trainer/distributed.py's Distribution")
    parser.add_argument("--contained", action="store_true", help="launch/worker: inside the bubblewrap sandbox")
    parser.add_argument("--seccomp", action="store_true",
                        help="load the sandbox's seccomp filter here (a pod's step, where no bubblewrap applied it)")
    args = parser.parse_args(argv)
    apply_limits(args.as_mb, args.cpu_s, args.fsize_mb, args.nproc, nofile=1024)
    started = time.perf_counter()
    try:
        if args.seccomp and args.command != "worker":  # a worker inherits its agent's filter and stacks its own
            _stage("sandbox", False, load_filter, args.command == "launch")
        result = COMMANDS[args.command](args.input, args.scratch, args)
    except _LostPeer as lost:
        print(f"contained {args.command}: lost a peer worker: {lost}", file=sys.stderr)
        return 1
    except _Stop as stop:
        err = {"stage": stop.stage, "reason": stop.reason, "gate": stop.gate}
        (args.scratch / "error.json").write_text(json.dumps(err))
        print(f"contained {args.command} failed at {stop.stage}: {stop.reason}", file=sys.stderr)
        return 3 if stop.gate else 4
    except Exception:  # noqa: BLE001 - our own bug or unreadable input: the log gets the traceback
        traceback.print_exc()
        return 4
    # a warm sandbox's clock starts at its command, not while it waited for one
    result["wall_seconds"] = result.pop("command_seconds", time.perf_counter() - started)
    (args.scratch / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    import os

    os._exit(code)  # no interpreter teardown: atexit hooks or finalizers a plugin left cannot change the exit
