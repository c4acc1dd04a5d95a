"""A contained step of the cluster's training pod, run in a container of its own (operator/platform/kubernetes.py).

    python -m cambrian.trainer.pod {train,predict} --work /work [--wall-seconds N] [--memory-mb N]
        [--workers N --nodes N --rdzv-endpoint HOST:PORT --rdzv-id ID --node-index I --local-addr ADDR]

The pod is the sandbox here (no token, no network, read-only root, optional RuntimeClass): bubblewrap cannot nest
in a container without user namespaces, so the step runs trainer/contained.py as a plain child, with the same
limits and the same whole-tree kill as locally. It always exits 0 and leaves the child's outcome in
`<name>-out/step-status.json`; the scorer container, which alone mounts the held-out labels, reads that outcome
as untrusted input and decides the verdict (trainer/train.py `score_pod`).

- train: reads /work/training-in (training rows only), writes the exported program to /work/training-out;
- predict: copies that program into /work/scoring-in (held-out features, no labels) and writes predictions to
  /work/scoring-out. Loading the program may unpickle what the candidate wrote, so it happens here, not in
  the scorer.

A baseline run that prepare found in the run store (trainer/runstore.py REUSE in the step's input) runs nothing.

In a data-parallel gang (operator/platform/gang.py) the train step of each pod runs torchrun's agent for its
node (trainer/contained.py `launch`) with the rendezvous flags; only the node whose workers held global rank 0
exports a model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from cambrian.errors import ConfigError
from cambrian.trainer.distributed import Distribution
from cambrian.trainer.runstore import REUSE
from cambrian.trainer.train import STEP_STATUS, SandboxLimits, _Contained

STEPS = {"train": "training", "predict": "scoring"}


def _wants_gpu(input_dir: Path) -> bool:
    try:
        device = json.loads((input_dir / "config.json").read_text())["training"]["device"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    from cambrian.trainer.sandbox import gpu_present

    return device != "cpu" and gpu_present()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cambrian.trainer.pod")
    parser.add_argument("command", choices=sorted(STEPS))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--wall-seconds", type=float, default=SandboxLimits.wall_seconds)
    parser.add_argument("--memory-mb", type=int, default=SandboxLimits.memory_mb)
    # a gang's train step (`cambrian train`'s flags of the same names)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--rdzv-endpoint")
    parser.add_argument("--rdzv-id", default="cambrian")
    parser.add_argument("--node-index", type=int)
    parser.add_argument("--local-addr")
    args = parser.parse_args(argv)
    try:
        dist = Distribution(args.workers, args.nodes, args.rdzv_endpoint, args.rdzv_id, node_index=args.node_index,
                            local_addr=args.local_addr)
    except ConfigError as exc:
        parser.error(str(exc))
    parallel = args.command == "train" and dist.parallel
    limits = SandboxLimits(wall_seconds=args.wall_seconds, memory_mb=args.memory_mb)
    name = STEPS[args.command]
    gpu = args.command == "train" and _wants_gpu(args.work / "training-in")
    step = _Contained(args.work, name, contain=False, limits=limits, gpu=gpu, in_pod=True)
    if (step.input / REUSE).exists():  # prepare found this baseline run stored: nothing to train or predict
        (step.scratch / STEP_STATUS).write_text(json.dumps({"returncode": 0, "wall_seconds": 0.0, "timed_out": False,
                                                            "skipped": "reuse"}))  # read by the scorer (score_pod)
        print(f"{args.command} step skipped: the run is in the run store (the scorer checks it)", file=sys.stderr)
        return 0
    if args.command == "predict":
        program = args.work / "training-out" / "model.pt2"
        if program.is_file():
            shutil.copyfile(program, step.input / "model.pt2")
    res = step.execute("launch" if parallel else args.command, cpu_only=not gpu, dist=dist if parallel else None)
    status = {"returncode": res.returncode, "wall_seconds": res.wall_seconds, "timed_out": res.timed_out}
    (step.scratch / STEP_STATUS).write_text(json.dumps(status))
    print(f"{args.command} step ended with exit {res.returncode}{' (timed out)' if res.timed_out else ''}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
