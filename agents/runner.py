"""Run one candidate training in a resource-limited subprocess (local mode of `compute_loss`/`compute_eval`).

Generated code never runs in the agent's process, nor in the `cambrian train` process this starts: that
process contains it with bubblewrap and seccomp (trainer/sandbox.py), hands it only the training rows, and
scores the exported model itself (trainer/train.py); where the sandbox cannot be built, a candidate with
code fails with stage `sandbox`. Around it, each candidate is `cambrian train` in a child with
- address-space, CPU-time, file-size and core limits (setrlimit, via sandbox_exec),
- a wall-clock timeout and a resident-memory watchdog over its whole process tree (kill -9 of its group),
- an environment stripped of credentials (API keys, cloud and Kubernetes settings), HOME in a temp dir,
- a temporary working directory, and no network where unprivileged user namespaces allow it.
The outcome is read from the trainer's contract: exit code, OUT/metrics.json or OUT/error.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil

from cambrian.agents.journal import Failure
from cambrian.agents.settings import RunLimits  # noqa: F401  (the limits run_candidate applies)
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import Delta

_SECRET_PREFIXES = ("GEMINI", "GOOGLE", "OPENAI", "AWS", "KUBE", "AZURE", "ANTHROPIC", "GCP", "GCLOUD", "CLOUDSDK",
                    "HF_", "HUGGING", "GITHUB", "GH_", "DOCKER", "VAULT", "CAMBRIAN_PROVIDER")  # fmt: skip
# PROXY: a proxy is a way out of the network isolation, and its URL often carries a password.
_SECRET_WORDS = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|SESSION|COOKIE|PROXY)", re.I)
_SECRET_EXACT = {"SSH_AUTH_SOCK", "SSH_AGENT_PID", "NETRC", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"}


def clean_environment(env: dict[str, str] | None = None, home: str | None = None) -> dict[str, str]:
    """The environment a candidate gets: everything credential-like removed."""
    src = dict(os.environ if env is None else env)
    out = {}
    for k, v in src.items():
        up = k.upper()
        if up in _SECRET_EXACT or up.startswith(_SECRET_PREFIXES) or _SECRET_WORDS.search(up):
            continue
        out[k] = v
    if home:
        out["HOME"] = home
        out["TMPDIR"] = home
    out["PYTHONDONTWRITEBYTECODE"] = "1"
    return out


@dataclass
class RunOutcome:
    ok: bool
    metrics: dict[str, Any] | None = None
    failure: Failure | None = None
    wall_seconds: float = 0.0
    out_dir: Path | None = None
    log_tail: str = ""
    isolation: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def network_isolation_available() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def default_train_command() -> list[str]:
    return [sys.executable, "-m", "cambrian.cli", "train"]


def build_command(
    base: list[str], config_file: Path, delta_file: Path | None, data_dir: Path, out_dir: Path, limits: RunLimits,
    fidelity_file: Path | None = None,
) -> tuple[list[str], list[str]]:
    full, isolation = launcher(limits, _cpu_seconds(limits))
    return [*full, *base, *train_arguments(config_file, delta_file, data_dir, out_dir, limits, fidelity_file)], isolation


def train_arguments(config_file: Path, delta_file: Path | None, data_dir: Path, out_dir: Path, limits: RunLimits,
                    fidelity_file: Path | None = None) -> list[str]:
    """`cambrian train`'s arguments for one candidate (after the command itself)."""
    cmd = ["--config", str(config_file), "--data", str(data_dir), "--out", str(out_dir)]
    if delta_file is not None:
        cmd += ["--delta", str(delta_file)]
    if fidelity_file is not None:
        cmd += ["--fidelity", str(fidelity_file)]
    if limits.workers > 1:
        cmd += ["--workers", str(limits.workers)]
    return cmd


def _cpu_seconds(limits: RunLimits) -> int:
    # CPU time is always capped: by default at the wall limit times the threads it may use, plus slack
    return limits.cpu_seconds or int(limits.wall_seconds * (limits.threads or os.cpu_count() or 1) + 60)


def launcher(limits: RunLimits, cpu_seconds: int) -> tuple[list[str], list[str]]:
    """The command prefix that limits the trusted trainer process (and, inherited, its children): no network,
    rlimits (cpu_seconds 0: none), then `--`; and the isolation it gives, for the record."""
    isolation = []
    full = [sys.executable, "-m", "cambrian.agents.sandbox_exec"]
    if limits.address_space_mb:
        full += ["--as-mb", str(limits.address_space_mb)]
        isolation.append(f"as={limits.address_space_mb}MiB")
    if cpu_seconds:
        full += ["--cpu-s", str(cpu_seconds)]
        isolation.append(f"cpu={cpu_seconds}s")
    if limits.file_size_mb:
        full += ["--fsize-mb", str(limits.file_size_mb)]
    full.append("--")
    if limits.network != "allow":
        if network_isolation_available():
            full = ["unshare", "-rn", *full]
            isolation.append("no-network")
        elif limits.network == "off":
            raise RuntimeError("network isolation requested (limits.network=off) but `unshare -rn` is unavailable")
    return full, isolation


def candidate_environment(limits: RunLimits, home: str) -> dict[str, str]:
    env = clean_environment(home=home)
    if limits.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(limits.threads)
    return env


def stage_data(data_dir: Path, work: Path) -> Path:
    """WORK/data with only what the data's declaration names (its tables' files or folders, world.json and a
    YAML declaration that travels with a snapshot), hard-linked (copied across file systems): the candidate is
    never handed the real data directory, so what no declaration names (the world's hidden truth/) is not where it
    can look."""
    from cambrian.trainer.data import source_schema
    from cambrian.trainer.fetch import DECLARATION
    from cambrian.trainer.schema import WORLD

    staged = work / "data"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    declared = source_schema(data_dir) if (data_dir / "world.json").is_file() else WORLD  # a bare folder: the world's
    names = ["world.json", DECLARATION, *((t.path or key) for key, t in declared.tables.items())]
    for name in names:
        src = data_dir / name
        if src.is_dir():
            shutil.copytree(src, staged / name, copy_function=_link_or_copy)
        elif src.is_file():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, staged / name)
    return staged


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _tree_rss(proc: psutil.Process, exclude: frozenset[int] = frozenset(), alone: frozenset[int] = frozenset()) -> int:
    """Resident memory of a process tree, without the subtrees rooted at `exclude` (a warm worker's idle spares)
    and without the processes in `alone`, whose children still count (a warm worker's zygote, trainer/zygote.py)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
        for pid in exclude:
            try:
                skip = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
            except psutil.Error:
                continue
            procs = [p for p in procs if p.pid not in skip]
        procs = [p for p in procs if p.pid not in alone]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class _ColdRun:
    """One `cambrian train` child for one candidate, in its own process group."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: str, log_file: Path):
        with open(log_file, "wb") as log:
            self.popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int:
        _kill_group(self.popen)
        return self.popen.wait()

    def spare_pids(self) -> tuple[frozenset[int], frozenset[int]]:
        return frozenset(), frozenset()

    def close(self) -> None:
        if self.popen.poll() is None:
            _kill_group(self.popen)
            self.popen.wait()
        _kill_group(self.popen)


class WarmWorker:
    """A worker slot's warm trainer (trainer/warm.py `serve`): one long-lived trusted process that runs this
    slot's `cambrian train` requests one after another, with the project imported once and pre-started single-use
    sandboxes for the candidate code. It is started on first use with the cold run's launcher (no network,
    address-space and file-size limits, a cleaned environment; no CPU-time rlimit, which would add up over
    candidates: the wall-time and memory watchdogs of run_candidate bound each request). A request that is
    killed takes the whole worker with it (its tree: the candidate's sandbox and the spares); the next request
    starts a fresh one. `cache_size`: prepared training rows kept (trainer/warm.py PreparedCache; 0: none).
    `zygote`: the steps are forks of the worker's zygote (trainer/zygote.py), else pre-started bubblewrap sandboxes."""

    def __init__(self, home: Path, limits: RunLimits, cache_size: int = 4, zygote: bool = True):
        self.home, self.limits, self.cache_size, self.zygote = Path(home).resolve(), limits, cache_size, zygote
        self.popen: subprocess.Popen | None = None
        self.last_reply: dict[str, Any] = {}
        # the worker's HOME and TMPDIR, in the slot's own folder: what a worker ended with its driver left there is
        # removed when the slot starts again or a driver recovers the run folder, never left in the system's temp
        self.tmp = self.home / "tmp"

    def isolation(self) -> list[str]:
        return launcher(self.limits, 0)[1]

    @staticmethod
    def clear(home: Path) -> None:
        """Remove what a worker of the slot at `home` left (its temp folder, its pool); none may be running."""
        shutil.rmtree(home / "tmp", ignore_errors=True)
        shutil.rmtree(home / "pool", ignore_errors=True)

    def _start(self) -> None:
        full, _ = launcher(self.limits, 0)
        self.clear(self.home)
        self.tmp.mkdir(parents=True)
        # the home folder in the command line: the local platform's recover() finds a left-over worker by it
        cmd = [*full, sys.executable, "-m", "cambrian.trainer.warm", str(self.home / "pool"), str(self.cache_size),
               "zygote" if self.zygote else "bwrap"]
        with open(self.home / "worker.log", "ab") as log:
            self.popen = subprocess.Popen(cmd, cwd=self.tmp, env=candidate_environment(self.limits, str(self.tmp)),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          start_new_session=True)
        self.pid = self.popen.pid

    def submit(self, argv: list[str], log_file: Path) -> "WarmWorker":
        if self.popen is None or self.popen.poll() is not None:
            self.stop()
            self._start()
        log_file.write_bytes(b"")
        try:
            self.popen.stdin.write((json.dumps({"argv": argv, "log": str(log_file)}) + "\n").encode())
            self.popen.stdin.flush()
        except OSError:  # it died meanwhile: wait() reports its exit
            pass
        return self

    def wait(self, timeout: float) -> int | None:
        """The request's exit code once the worker replies; the worker's own exit code if it died."""
        import select

        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.popen.stdout.readline()
        if not line:  # the worker died: its exit code (a signal as a negative number) is the request's
            return self.popen.wait()
        try:
            self.last_reply = json.loads(line)
            return int(self.last_reply["exit_code"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            return 1

    def spare_pids(self) -> tuple[frozenset[int], frozenset[int]]:
        """The worker's idle pre-started sandboxes (trees) and its zygote (the process alone: its children are the
        candidate's steps), from its own record (trainer/warm.py): no candidate's memory."""
        from cambrian.trainer.warm import SPARES

        try:
            record = json.loads((self.home / "pool" / SPARES).read_text())
            return (frozenset(int(p) for p in record["trees"]), frozenset(int(p) for p in record["processes"]))
        except (OSError, ValueError, TypeError, KeyError):
            return frozenset(), frozenset()

    def kill(self) -> int:
        _kill_group(self.popen)  # its sandboxes go with it (bubblewrap's --die-with-parent)
        rc = self.popen.wait()
        self.stop()
        return rc

    def close(self) -> None:
        """After a request: a worker that ended is cleaned up (a healthy one stays for the next request)."""
        if self.popen is not None and self.popen.poll() is not None:
            self.stop()

    def stop(self) -> None:
        if self.popen is not None:
            _kill_group(self.popen)
            self.popen.wait()
            for f in (self.popen.stdin, self.popen.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.popen = None
        self.clear(self.home)


def run_temp(work: Path) -> Path:
    """A cold run's temp folder (its trusted trainer's HOME and TMPDIR), inside the run's work folder: a re-run after
    a killed driver starts it afresh, and a recovering driver removes it (local_env.remove_temp_folders)."""
    return work / "tmp"


def _kill_group(popen: subprocess.Popen) -> None:
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_candidate(
    config: ModelConfig,
    delta: Delta | None,
    data_dir: str | Path,
    work_dir: str | Path,
    limits: RunLimits | None = None,
    command: list[str] | None = None,
    poll_s: float = 0.2,
    fidelity: dict | None = None,
    worker: "WarmWorker | None" = None,
) -> RunOutcome:
    """Train `config` (+ `delta`) in a sandboxed child; never raises for anything the candidate does.
    `fidelity`: a first look's {epochFraction, sampleFraction} (trainer/fidelity.py), applied after the delta.
    `worker`: a worker slot's warm trainer (same limits and watchdog; `command` is then not used)."""
    limits = limits or RunLimits()
    work = Path(work_dir).resolve()
    out = work / "out"
    if out.exists():  # a re-run after an interrupted attempt starts clean
        shutil.rmtree(out)
    work.mkdir(parents=True, exist_ok=True)
    config_file = work / "config.json"
    config_file.write_text(config.model_dump_json(indent=2))
    delta_file = None
    if delta is not None:
        delta_file = work / "delta.json"
        delta_file.write_text(delta.model_dump_json(indent=2))
    fidelity_file = None
    if fidelity is not None:
        fidelity_file = work / "fidelity.json"
        fidelity_file.write_text(json.dumps(fidelity))
    log_file = work / "train.log"
    staged = stage_data(Path(data_dir).resolve(), work)
    tmp = None
    try:
        if worker is not None:
            isolation = worker.isolation()
        else:
            cmd, isolation = build_command(command or default_train_command(), config_file, delta_file, staged, out,
                                           limits, fidelity_file)
    except RuntimeError as exc:
        return RunOutcome(False, failure=Failure(phase="Validated", stage="sandbox", reason=str(exc)))
    started = time.monotonic()
    killed: tuple[str, str] | None = None
    peak = 0
    try:
        if worker is not None:
            run = worker.submit(["train", *train_arguments(config_file, delta_file, staged, out, limits, fidelity_file)],
                                log_file)
        else:
            tmp = run_temp(work)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            run = _ColdRun(cmd, candidate_environment(limits, str(tmp)), str(tmp), log_file)
        ps = psutil.Process(run.pid)
        try:
            while True:
                rc = run.wait(poll_s)
                if rc is not None:
                    break
                elapsed = time.monotonic() - started
                if elapsed > limits.wall_seconds:
                    killed = ("timeout", f"killed after exceeding the wall-time limit of {limits.wall_seconds:g}s")
                elif limits.rss_mb:
                    rss = _tree_rss(ps, *run.spare_pids())
                    peak = max(peak, rss)
                    if rss > limits.rss_mb * 1024 * 1024:
                        killed = ("memory", f"killed at {rss / 2**20:.0f} MiB resident, over the limit of "
                                            f"{limits.rss_mb} MiB")
                if killed:
                    rc = run.kill()
                    break
        finally:
            run.close()  # never leave a candidate (or a grandchild that outlived its parent) behind
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - started
    tail = _tail(log_file)
    outcome = RunOutcome(False, wall_seconds=wall, out_dir=out, log_tail=tail, isolation=isolation)
    if killed:
        outcome.failure = Failure(phase="Training", stage=killed[0], reason=killed[1])
        return outcome
    outcome.failure = classify(rc, out, tail, limits)
    if outcome.failure is None:
        try:
            metrics = json.loads((out / "metrics.json").read_text())
        except (OSError, ValueError) as exc:  # ValueError: JSON errors and non-UTF-8 bytes
            outcome.failure = Failure(phase="Training", stage="sandbox", reason=f"exit 0 but no readable metrics.json: {exc}",
                                      exit_code=rc)
            return outcome
        problem = check_metrics(metrics)
        if problem:
            outcome.failure = Failure(phase="Training", stage="metrics", reason=f"metrics.json is unusable: {problem}",
                                      exit_code=rc)
        else:
            outcome.metrics = metrics
            outcome.ok = True
    return outcome


# The trainer's contract (docs/CONTRACTS.md): these metrics, as real numbers in their natural ranges.
# Candidate code runs in the process that writes metrics.json, so its content is untrusted too.
METRIC_RANGES = {"val_loss": (0.0, float("inf")), "auc": (0.0, 1.0), "long_watch_corr": (-1.0, 1.0),
                 "return_corr": (-1.0, 1.0), "like_corr": (-1.0, 1.0),
                 "top_watch_share": (0.0, 1.0)}  # a share of watch seconds; the reward's default objective


def check_metrics(metrics: Any) -> str | None:
    """None if metrics.json can be scored; else what is wrong with it. val_loss is required, the others are
    checked when present; auc may be NaN (no clicks held out)."""
    import math

    if not isinstance(metrics, dict):
        return f"expected a JSON object, got {type(metrics).__name__}"
    for name, (lo, hi) in METRIC_RANGES.items():
        v = metrics.get(name)
        if v is None and name != "val_loss":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{name} is {'missing' if v is None else repr(v)[:40]}, not a number"
        if math.isnan(v) and name == "auc":
            continue
        if not (math.isfinite(v) and lo <= v <= hi):
            return f"{name} = {v!r} is outside [{lo:g}, {hi:g}]"
    declared = metrics.get("proxies", [])  # the data's declaration's own proxies: an AUC or a rank correlation
    if not isinstance(declared, list) or not all(isinstance(n, str) for n in declared):
        return "proxies is not a list of metric names"
    for name in (n for n in declared if n not in METRIC_RANGES):
        v = metrics.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{name} is {'missing' if v is None else repr(v)[:40]}, not a number"
        if not math.isnan(v) and not -1.0 <= v <= 1.0:  # NaN: an AUC with one class held out
            return f"{name} = {v!r} is outside [-1, 1]"
    return None


def classify(rc: int, out: Path, tail: str, limits: RunLimits) -> Failure | None:
    """Map the trainer's exit code (and error.json) to a journal Failure; None for success."""
    if rc == 0:
        return None
    err: dict[str, Any] = {}
    try:
        err = json.loads((out / "error.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    if rc in (2, 3, 4) and err:
        phase = "Training" if rc == 4 else "Validated"
        return Failure(phase=phase, stage=str(err.get("stage", "unknown")), reason=str(err.get("reason", ""))[:2000],
                       exit_code=rc)
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        stage = "cpu" if sig in ("SIGXCPU",) or (sig == "SIGKILL" and limits.cpu_seconds) else "killed"
        return Failure(phase="Training", stage=stage, reason=f"killed by {sig}" + (f"; log: {tail[-300:]}" if tail else ""),
                       exit_code=rc)
    low = tail.lower()
    if "memoryerror" in low or "cannot allocate memory" in low or "can't allocate memory" in low:
        return Failure(phase="Training", stage="memory", reason=f"ran out of memory (limit): {tail[-300:]}", exit_code=rc)
    return Failure(phase="Training", stage="crash", reason=f"exit code {rc}: {tail[-500:]}", exit_code=rc)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode("utf-8", "replace").strip()
