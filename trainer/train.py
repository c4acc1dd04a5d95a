"""Train one configuration Φ: gate, train in the sandbox, score apart, write the bundle.

Three processes, so that a candidate cannot forge its verdict:
1. this one (trusted) runs the static checks and the reward SQL, and splits the data: the training rows go to
   a read-only input folder, the held-out rows and their labels stay here;
2. the contained trainer (trainer/contained.py in trainer/sandbox.py's bubblewrap sandbox) runs the
   candidate's code on the training rows only and exports the model as a torch.export program;
3. the contained predictor, a fresh sandbox that runs no candidate Python, loads that program (loading it may
   unpickle data the candidate wrote, hence the sandbox) and predicts the held-out rows from their features.
This process then computes every metric from those predictions and the labels only it holds. It never imports
torch (the training loop and the predictions are trainer/fit.py's, inside the sandbox): a warm worker slot, a
cold run and a pod's trusted steps pay neither its import (~1.3 CPU seconds) nor its memory (~500 MiB).
"""

from __future__ import annotations

import json
import math
import os
import stat
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np

from cambrian.errors import GateError, TrainingError
from cambrian.trainer.bundle import write_bundle
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.splits import Split, Written
from cambrian.trainer.features import save_catalogue
from cambrian.trainer.codecheck import static_checks
from cambrian.trainer.distributed import Distribution
from cambrian.trainer.schema import WORLD, DataSchema
from cambrian.trainer.sandbox import (INPUT, SCRATCH, StageFailure, contained_environment, containment, gpu_present,
                                      run_contained)

if TYPE_CHECKING:  # the trusted side's: the sandboxed steps import this module without pandas and DuckDB
    from cambrian.trainer.data import Dataset

SCHEMA_VERSION = 1
Containment = Literal["auto", "bwrap", "none"]


@dataclass
class SandboxLimits:
    """Limits of each contained process (`cambrian train --wall-seconds/--memory-mb`)."""

    wall_seconds: float = 3600.0
    memory_mb: int = 16384  # address space, CPU runs only (CUDA maps far more address space than it uses)
    file_size_mb: int = 2048
    processes: int = 512  # threads count too


# ---- outside: the scorer --------------------------------------------------------------------------------

def evaluate(config: ModelConfig, scores: np.ndarray, val: Split, proxies: tuple = WORLD.proxies) -> dict:
    """Every proxy metric the data's declaration names, from held-out predictions and the held-out labels and
    signals."""
    from cambrian.trainer.metrics import proxy_metrics, scored_loss  # pandas: the scorer's, not the contained trainer's

    if scores.shape != (len(val),):
        raise StageFailure("export", f"the exported model gave {scores.shape} scores for {len(val)} held-out rows")
    if not np.isfinite(scores).all():
        raise TrainingError("the trained model produces non-finite scores on the validation days")
    val_loss = scored_loss(config.reward.loss, scores, val.label, val.weight)
    return {"val_loss": val_loss, **proxy_metrics(scores, val.signals, proxies)}


def has_code(config: ModelConfig) -> bool:
    return bool(config.optimizer.code or config.architecture.code)


def contain_decision(config: ModelConfig, sandbox: Containment) -> bool:
    """Whether to use bubblewrap (sandbox.containment): `auto` refuses to run plugin code where it cannot."""
    return containment(sandbox, has_code(config))


def _write_heldout(path: Path, split: Split, inputs: tuple[str, ...]) -> None:
    """Features only, no labels; `inputs`: the exported program's input names, in order, for a predictor that
    has no spec."""
    np.savez(path, inputs=np.array(inputs), **{f"f_{k}": v for k, v in split.features.items()})


def write_training_input(folder: Path, config: ModelConfig, data_dir: str | Path, workers: int = 1,
                         schema: DataSchema | str | None = None, cache=None) -> Dataset:
    """The contained trainer's read-only input: the training rows as Parquet (one file per worker; each reads
    only its own, see trainer/distributed.py), streamed there from the source by prepare (or linked from a warm
    worker's PreparedCache); the data set back, its held-out split in memory."""
    folder.mkdir(parents=True, exist_ok=True)  # in a pod, the folder is a volume
    from cambrian.trainer.data import prepare

    data = (cache.prepare if cache is not None else prepare)(data_dir, config, folder, workers, schema)
    (folder / "config.json").write_text(config.model_dump_json())
    (folder / "spec.json").write_text(json.dumps(data.spec.to_dict()))
    save_catalogue(folder / "catalogue.npz", data.catalogue)
    return data


STEP_STATUS = "step-status.json"  # a pod step's outcome (trainer/pod.py), next to what the step wrote
STEP_LOG = "step.log"


class _Contained:
    """One contained step: its own input and scratch folders under a work folder. Locally the work folder is
    private and the step runs here; in the cluster each folder is a volume and the step ran in an earlier
    container of the pod (`in_pod`), which left its outcome in STEP_STATUS."""

    def __init__(self, work: Path, name: str, contain: bool, limits: SandboxLimits, gpu: bool, in_pod: bool = False):
        self.input, self.scratch = work / f"{name}-in", work / f"{name}-out"
        if not in_pod:
            self.scratch.mkdir(parents=True)
        # in a pod the work folder itself is read-only: the log lives with the step's output
        self.log = self.scratch / STEP_LOG if in_pod else work / f"{name}.log"
        self.contain, self.limits, self.gpu, self.name, self.in_pod = contain, limits, gpu, name, in_pod
        self.warm = None  # a pre-started sandbox waiting for its one command (trainer/warm.py)

    def run(self, command: str, cpu_only: bool, dist: Distribution | None = None) -> dict:
        return self.verdict(self.execute(command, cpu_only, dist))

    def output(self, name: str) -> Path:
        """A file the step wrote, which this process reads: a link (to a host file, or in a pod to the held-out
        data) or anything but a plain file counts as absent."""
        path = self.scratch / name
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                return path
        except OSError:
            pass
        return self.scratch / f"{name}.absent"

    def outcome(self) -> dict:
        """The verdict on a step an earlier container of the pod ran (its status file is untrusted too)."""
        from cambrian.trainer.sandbox import ContainedResult, file_tail

        try:
            st = json.loads(self.output(STEP_STATUS).read_text())
            res = ContainedResult(int(st["returncode"]), float(st["wall_seconds"]), st["timed_out"] is True,
                                  file_tail(self.output(STEP_LOG)))
        except (OSError, ValueError, KeyError, TypeError):
            raise StageFailure("crash", f"the {self.name} step left no readable outcome") from None
        return self.verdict(res)

    def execute(self, command: str, cpu_only: bool, dist: Distribution | None = None):
        """Run the step here and wait for it; `network`: a data-parallel group's filter (seccomp_program)."""
        if self.warm is not None:
            from cambrian.trainer.warm import release

            proc, self.warm = self.warm, None
            return release(proc, command, self.limits.wall_seconds, self.log)
        return run_contained(self.input, self.scratch, self.argv(command, cpu_only, dist), self.environment(),
                             self.limits.wall_seconds, self.log, gpu=self.gpu and not cpu_only, contain=self.contain,
                             network=bool(dist and dist.parallel))

    def argv(self, command: str, cpu_only: bool, dist: Distribution | None = None) -> list[str]:
        """The contained program's command line; with a parallel `dist`, the launcher of torchrun's agent."""
        lim = self.limits
        where = (INPUT, SCRATCH) if self.contain else (str(self.input), str(self.scratch))
        cpu_s = int(lim.wall_seconds * max(1, os.cpu_count() or 1)) + 60
        argv = [sys.executable, "-m", "cambrian.trainer.contained", command, *where, "--cpu-s", str(cpu_s),
                "--fsize-mb", str(lim.file_size_mb), "--nproc", str(lim.processes)]
        if cpu_only and lim.memory_mb:
            argv += ["--as-mb", str(lim.memory_mb)]
        if dist and dist.parallel:
            argv += ["--distribution", json.dumps(asdict(dist)), *(["--contained"] if self.contain else [])]
        if self.in_pod:  # the pod is the boundary, bubblewrap cannot nest there: the same filter, loaded in-process
            argv += ["--seccomp"]
        return argv

    @staticmethod
    def environment() -> dict[str, str]:
        return contained_environment(**{var: os.environ[var] for var in (
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if var in os.environ})

    def verdict(self, res) -> dict:
        """The contained process's outcome, read as untrusted: only known stages, short one-line reasons."""
        if res.timed_out:
            raise StageFailure("timeout", f"the {self.name} process was killed after the wall-time limit of "
                                          f"{self.limits.wall_seconds:g}s")
        rc = res.returncode
        if rc == 0:
            try:
                result = json.loads(self.output("result.json").read_text())
                return result if isinstance(result, dict) else {}
            except (OSError, ValueError):
                raise StageFailure("training", f"the {self.name} process ended early (exit 0) without a result; "
                                               "did the candidate code exit?") from None
        if rc in (3, 4):
            try:
                err = json.loads(self.output("error.json").read_text())
            except (OSError, ValueError):
                err = {}
            from cambrian.trainer.contained import STAGES

            stage = err.get("stage") if err.get("stage") in STAGES else "training"
            reason = _one_line(str(err.get("reason") or _last_line(res.log_tail)))
            if rc == 3 and stage in ("static", "forward_backward"):
                raise GateError(stage, reason)
            raise StageFailure(stage, reason)
        signum = rc - 128 if rc > 128 else -rc if rc < 0 else 0
        if signum:
            import signal

            name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
            stage = {"SIGXCPU": "cpu", "SIGXFSZ": "file_size"}.get(name, "killed")
            raise StageFailure(stage, f"the {self.name} process was killed by {name}: {_last_line(res.log_tail)}")
        low = res.log_tail.lower()
        if "memoryerror" in low or "cannot allocate memory" in low:
            raise StageFailure("memory", f"the {self.name} process ran out of memory (limit {self.limits.memory_mb} MiB)")
        raise StageFailure("crash", f"the {self.name} process failed (exit {rc}): {_last_line(res.log_tail)}")


def _one_line(text: str, n: int = 500) -> str:
    return " ".join(text.split())[:n]


def _last_line(log: str) -> str:
    """The last line of a log (an exception's message, not its traceback)."""
    lines = [line for line in log.splitlines() if line.strip()]
    return _one_line(lines[-1], 300) if lines else "no output"


def _work_folder():
    return tempfile.TemporaryDirectory(prefix="cambrian-train-")


def run_gate(config: ModelConfig, data_dir: str | Path, sandbox: Containment = "auto",
             limits: SandboxLimits | None = None, schema: DataSchema | str | None = None) -> Dataset:
    """All gate stages: static checks and the reward SQL here, the forward/backward step contained. The data set
    comes back with its held-out split; its training rows are counted only (load_dataset reads them)."""
    static_checks(config)
    contain = contain_decision(config, sandbox)
    gpu = _wants_gpu(config)  # reads /dev and torch's version file: once
    with _work_folder() as tmp:
        step = _Contained(Path(tmp), "gate", contain, limits or SandboxLimits(), gpu)
        data = write_training_input(step.input, config, data_dir, schema=schema)
        step.run("gate", cpu_only=not gpu)
    data.train = Written([], len(data.train))  # counted; the files went with the gate's folder
    return data


def _wants_gpu(config: ModelConfig) -> bool:
    return config.training.device != "cpu" and gpu_present()


def train(config: ModelConfig, data_dir: str | Path, out_dir: str | Path, sandbox: Containment = "auto",
          limits: SandboxLimits | None = None, dist: Distribution | None = None,
          schema: DataSchema | str | None = None) -> dict:
    """Gate, train (contained; data-parallel with `dist`), predict (contained), score; write metrics.json and
    bundle/ under out_dir. On a node of a multi-node gang whose workers did not include global rank 0, there
    is no model here: it returns {"role": "worker"} and writes neither."""
    from cambrian.trainer.warm import Laps, pool

    laps = Laps()  # where this run's time went (OUT/timing.json; informational)
    limits = limits or SandboxLimits()
    dist = dist or Distribution()
    static_checks(config)
    contain = contain_decision(config, sandbox)
    gpu = _wants_gpu(config)
    warm = pool()
    if warm is not None and warm.limits == limits and contain and not gpu and not dist.parallel:
        return _train_warm(config, data_dir, out_dir, limits, warm, laps, schema)
    with _work_folder() as tmp:
        work = Path(tmp)
        trainer = _Contained(work, "training", contain, limits, gpu)
        predictor = _Contained(work, "scoring", contain, limits, gpu=False)
        data = write_step_inputs(config, data_dir, trainer, predictor, dist.workers, schema)
        laps.lap("prepare")
        result = trainer.run("launch" if dist.parallel else "train", cpu_only=not gpu, dist=dist)
        laps.lap("trainer_process", result)
        if dist.nodes > 1 and result.get("role") == "worker":
            return {"role": "worker", "config_fingerprint": config.fingerprint()}
        program = exported_program(trainer)
        shutil.copyfile(program, predictor.input / "model.pt2")
        predictor.run("predict", cpu_only=True)
        laps.lap("predictor_process")
        metrics = score(config, data, result, program, predictor, out_dir, "bwrap" if contain else "none", gpu,
                        dist.workers)
        laps.lap("score").write(Path(out_dir), warm=False)
        return metrics


def _train_warm(config: ModelConfig, data_dir: str | Path, out_dir: str | Path, limits: SandboxLimits, warm,
                laps, schema: DataSchema | str | None = None) -> dict:
    """`train` on a warm worker (trainer/warm.py): the same steps, in pre-started single-use sandboxes, the
    training rows from the worker's cache. Each sandbox is taken when its step starts and killed after it."""
    trainer = warm.take("training")
    predictor = None
    via = [trainer.warm]  # each step's process: a zygote's child (trainer/zygote.py) or a bubblewrap sandbox
    try:
        laps.lap("take_sandbox")
        data = write_training_input(trainer.input, config, data_dir, schema=schema, cache=warm.cache)
        laps.lap("prepare")
        result = trainer.run("train", cpu_only=True)
        laps.lap("trainer_process", result)
        program = exported_program(trainer)
        predictor = warm.take("scoring")
        via.append(predictor.warm)
        laps.lap("take_sandbox")
        _write_heldout(predictor.input / "heldout.npz", data.val, data.spec.inputs)
        shutil.copyfile(program, predictor.input / "model.pt2")
        predictor.run("predict", cpu_only=True)
        laps.lap("predictor_process")
        label = "+".join(sorted({getattr(w, "kind", "bwrap") for w in via}))  # "zygote", or "bwrap" as cold
        metrics = score(config, data, result, program, predictor, out_dir, label, False)
        laps.lap("score").write(Path(out_dir), warm=True)
        return metrics
    finally:
        from cambrian.trainer.warm import discard

        for step in (trainer, predictor):
            if step is not None:
                discard(step)


def write_step_inputs(config: ModelConfig, data_dir: str | Path, trainer: "_Contained", predictor: "_Contained",
                      workers: int = 1, schema: DataSchema | str | None = None) -> Dataset:
    """The trainer's input (training rows and labels, one shard per worker) and the predictor's (held-out
    features only, no labels)."""
    data = write_training_input(trainer.input, config, data_dir, workers, schema)
    predictor.input.mkdir(parents=True, exist_ok=True)
    _write_heldout(predictor.input / "heldout.npz", data.val, data.spec.inputs)
    return data


def exported_program(trainer: "_Contained") -> Path:
    program = trainer.output("model.pt2")
    if not program.is_file():
        raise StageFailure("export", "training ended without an exported model")
    return program


def pod_run_key(config: ModelConfig, data_dir: str | Path, reuse: Mapping[str, Any]) -> str:
    """A pod's key in the run store (trainer/runstore.py): Φ as resolved (its first-look fractions applied), the
    Evolution's training settings from the run's ConfigMap, the data by its content (each pod writes it afresh)."""
    from cambrian.trainer import runstore

    return runstore.run_key({"baseline": config.model_dump(mode="json"), "training": reuse.get("training")},
                            Path(data_dir), ["cambrian", "train", "--pod-stage"], content=True)


def prepare_pod(config: ModelConfig, data_dir: str | Path, work: Path, workers: int = 1,
                reuse: Mapping[str, Any] | None = None) -> None:
    """The cluster pod's first step (trusted, no candidate code): the steps' inputs into their volumes (in a
    gang, one training shard per worker of the whole gang: which ranks this pod's workers get is torchrun's).
    `reuse` (a baseline run: the run store's folder and the training settings): a run found stored leaves only
    a marker for the training and predicting steps, which then run nothing; the scorer decides by itself."""
    from cambrian.trainer import runstore

    static_checks(config)
    if reuse is not None:
        key = pod_run_key(config, data_dir, reuse)
        if runstore.lookup(Path(reuse["store"]), key) is not None:
            for step in ("training", "scoring"):
                (work / f"{step}-in" / runstore.REUSE).write_text(json.dumps({"key": key}))
            return
    write_step_inputs(config, data_dir, _Contained(work, "training", False, SandboxLimits(), False, in_pod=True),
                      _Contained(work, "scoring", False, SandboxLimits(), False, in_pod=True), workers)


def score_pod(config: ModelConfig, data_dir: str | Path, out_dir: str | Path, work: Path, workers: int = 1,
              reuse: Mapping[str, Any] | None = None) -> dict:
    """The cluster pod's scorer container, the only one that mounts the held-out labels: the verdicts of the
    training and predicting containers (which ran before it) and every metric, from their untrusted output.
    A gang's pod whose workers did not hold global rank 0 has no model: {"role": "worker"}, as `train`.
    `reuse` (a baseline run): a run stored before gives its metrics (a scorer's, never candidate code's) and a
    copy of its bundle, whatever the steps before left; a run trained here is stored for the next pod."""
    from cambrian.trainer import runstore

    static_checks(config)
    if reuse is None:
        return _score_pod(config, data_dir, out_dir, work, workers)
    store, key = Path(reuse["store"]), pod_run_key(config, data_dir, reuse)
    stored = runstore.lookup(store, key)
    out = Path(out_dir)
    if stored is not None:
        runstore.restore(stored, out / "bundle")
        metrics = {**stored["metrics"], "reused": key}
        print(f"baseline run {key} is in the run store: its metrics and a copy of its bundle, not trained again",
              file=sys.stderr)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        return metrics
    if _skipped_for_reuse(work):  # nothing trained, and the stored run is gone
        raise StageFailure("reuse", f"prepare found run {key} in the run store, which no longer has it; run it again")
    metrics = _score_pod(config, data_dir, out_dir, work, workers)
    try:
        runstore.keep(store, key, metrics, out / "bundle")
    except OSError as exc:  # another pod stored the same run first, or the claim is full: this run stands
        print(f"baseline run not stored for reuse: {exc}", file=sys.stderr)
    return metrics


def _skipped_for_reuse(work: Path) -> bool:
    """The training step ran nothing because prepare found the run stored (trainer/pod.py). Read from the step's
    output volume, the one of its volumes the scorer mounts (prepare's marker lies in training-in, which it does
    not); untrusted like every step output, so it only names why there is no model, never gives a result."""
    step = _Contained(work, "training", False, SandboxLimits(), False, in_pod=True)
    try:
        return json.loads(step.output(STEP_STATUS).read_text()).get("skipped") == "reuse"
    except (OSError, ValueError, AttributeError):
        return False


def _score_pod(config: ModelConfig, data_dir: str | Path, out_dir: str | Path, work: Path, workers: int) -> dict:
    from cambrian.trainer.data import prepare

    data = prepare(data_dir, config, None)  # the held-out split only: the training rows are the trainer's
    limits = SandboxLimits()
    trainer = _Contained(work, "training", False, limits, False, in_pod=True)
    predictor = _Contained(work, "scoring", False, limits, False, in_pod=True)
    result = trainer.outcome()
    if workers > 1 and result.get("role") == "worker":
        return {"role": "worker", "config_fingerprint": config.fingerprint()}
    program = exported_program(trainer)
    predictor.outcome()
    return score(config, data, result, program, predictor, out_dir, "pod", result.get("device") == "cuda", workers)


def score(config: ModelConfig, data: Dataset, result: dict, program: Path, predictor: "_Contained",
          out_dir: str | Path, sandbox: str, gpu: bool, workers: int = 1) -> dict:
    """Every metric from the predictions and the labels only this process holds; the bundle and metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = read_predictions(predictor.output("predictions.npy"))
    seconds = _seconds(result.get("train_seconds"), result.get("wall_seconds"))
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "config_fingerprint": config.fingerprint(),
        "declaration": data.schema.name,  # whose proxies these are
        "proxies": [p.name for p in data.schema.proxies],
        **evaluate(config, scores, data.val, data.schema.proxies),
        "train_seconds": round(seconds, 4),
        "examples_per_second": round(len(data.train) * config.training.epochs / max(seconds, 1e-9), 1),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "epochs": config.training.epochs,
        "reward_loss": config.reward.loss,
        "device": "cuda" if gpu and result.get("device") == "cuda" else "cpu",
        "sandbox": sandbox,
        "workers": workers,
    }
    metrics |= training_notes(config, data, result)
    write_bundle(out / "bundle", program, config, data.spec, data.catalogue, metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def training_notes(config: ModelConfig, data: Dataset, result: dict) -> dict:
    """What a user should know about a run that still succeeded: the cap cut data, clipping never acted, proxies
    that carry no information on this data. `warnings` holds one line each (the CLI prints them on stderr)."""
    notes: dict = {"n_train_available": data.n_train_available}
    warnings: list[str] = []
    if data.n_train_available > len(data.train):
        warnings.append(f"capped at {len(data.train)} of {data.n_train_available} examples "
                        "(training.max_train_examples): the oldest were left out; raise it or set it to null to use all")
    clip = config.training.grad_clip
    steps, clipped, largest = (result.get(k) for k in ("clip_steps", "clipped_steps", "max_grad_norm"))
    if clip and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in (steps, clipped, largest)):  # reported by the contained process: checked, informational
        notes |= {"grad_clip_steps_clipped": int(clipped), "max_grad_norm": round(float(largest), 6)}
        if steps > 0 and clipped == 0:
            warnings.append(f"training.grad_clip {clip:g} never triggered: the largest gradient norm in {int(steps)} "
                            f"steps was {largest:.4g}, so clipping changed nothing; lower it below that or remove it")
    restarts = result.get("restarts")
    if isinstance(restarts, int) and not isinstance(restarts, bool) and restarts > 0:  # informational
        notes["restarts"] = restarts
        warnings.append(f"{restarts} worker group restart(s): a worker was lost and the group resumed from its "
                        "last checkpoint")
    from cambrian.trainer.metrics import uninformative_proxies

    uninformative = uninformative_proxies(data.val.signals, data.schema.proxies)
    if uninformative:
        notes["uninformative_metrics"] = uninformative
        warnings += [f"{name} is uninformative on this data set because {why}" for name, why in uninformative.items()]
    notes["warnings"] = warnings
    return notes


def read_predictions(path: Path) -> np.ndarray:
    """The predictor's output: a plain float array (no pickles), or the exported model failed to load or run."""
    try:
        scores = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StageFailure("export", f"no usable predictions from the exported model: {exc}") from None
    if scores.dtype.kind != "f" or scores.ndim != 1:
        raise StageFailure("export", f"the exported model's predictions are {scores.dtype}{list(scores.shape)}")
    return scores.astype(np.float32)


def _seconds(train_seconds, wall_seconds) -> float:
    """The contained process reports its own fit time: informational only, so bounded by its wall time."""
    wall = wall_seconds if isinstance(wall_seconds, (int, float)) and math.isfinite(wall_seconds) else 0.0
    fit_s = train_seconds if isinstance(train_seconds, (int, float)) and math.isfinite(train_seconds) else wall
    return float(min(max(fit_s, 0.0), max(wall, 0.0)) or wall)
