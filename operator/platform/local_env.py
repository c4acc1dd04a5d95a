"""The processes of local mode: one rollout's environment (collector, Prometheus, arms, router) with the
state it keeps across restarts, and the clean-up of what a killed driver left running."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cambrian.operator.localstore import write_atomic

PRE_DAYS = 14  # CUPED pre-period sent to the collector
ACTIVE_WINDOW = 7
# programs local mode starts (see stop_leftovers): servers, router, collector, Prometheus, trainers
OURS = ("cambrian.online.cli", "prometheus", "cambrian.agents.sandbox_exec", "cambrian.cli", "cambrian.trainer.warm")


@dataclass
class EnvState:
    """What a rollout's environment must remember across restarts (ROOT/rollouts/<name>/env.json)."""

    clock_day0: int | None = None  # clock day on which users were first routed
    world_day0: int | None = None  # the world's day at that moment
    days_done: int = 0  # whole days simulated since then
    pre_period: bool = False
    arm_urls: dict[str, str] = field(default_factory=dict)
    parked: bool = False  # concluded: processes stopped, what the core last saw is remembered below
    parked_arms: list[str] = field(default_factory=list)
    parked_weights: dict[str, int] | None = None


class RolloutEnv:
    """The processes of one rollout: collector + Prometheus (started with it), arms, router."""

    def __init__(self, name: str, folder: Path, world_dir: Path, warehouse: Any = None):
        self.name, self.dir, self.world_dir = name, folder, world_dir
        self.warehouse = warehouse  # online/warehouse.Warehouse: SQL metrics and the simulated users' days there
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "env.json"
        self.state = EnvState(**json.loads(self.state_path.read_text())) if self.state_path.is_file() else EnvState()
        self.arms: dict[str, Any] = {}  # arm -> ServiceProcess
        self.router: Any = None
        self.collector: Any = None
        self.prometheus: Any = None

    def save(self) -> None:
        write_atomic(self.state_path, json.dumps(asdict(self.state), indent=2, sort_keys=True) + "\n")

    @property
    def services(self) -> Path:
        return self.dir / "services"

    def start_metrics(self) -> None:
        from cambrian.online.prometheus import PrometheusProcess
        from cambrian.online.services import ServiceProcess

        if self.collector is None:
            self.collector = start_service(ServiceProcess(
                "collector", ["collect", "--db", str(self.dir / "collector.sqlite"), "--pre-days", str(PRE_DAYS),
                              "--active-window", str(ACTIVE_WINDOW),
                              *(self.warehouse.collector_args() if self.warehouse else [])], self.services))
        if self.prometheus is None:
            # The collector is the durable state and exports its current sums at every scrape, so the TSDB is
            # disposable: a fresh one per start (a TSDB cut off by a kill can refuse to start or panic).
            shutil.rmtree(self.dir / "prometheus" / "data", ignore_errors=True)
            prom = PrometheusProcess({"collector": [self.collector.address]}, workdir=self.dir / "prometheus")
            try:
                prom.start(wait_targets=False)  # a readout waits for the day it needs (prometheus_readout)
            except BaseException:
                prom.stop()
                raise
            self.prometheus = prom

    def stop(self) -> None:
        for s in [self.router, *self.arms.values(), self.collector]:
            if s is not None:
                s.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        self.router, self.arms, self.collector, self.prometheus = None, {}, None, None


def start_service(service: Any) -> Any:
    """Start a ServiceProcess and wait for /healthz; one that does not come up is stopped, not left behind."""
    try:
        return service.start().wait_ready()
    except BaseException:
        service.stop()
        raise


def stop_leftovers(root: Path) -> list[int]:
    """Stop processes left by an earlier driver on this run folder: each is found by ROOT in its command
    line and owned by this user, then stopped by its PID (SIGKILL of its process group: trainers fork)."""
    import signal

    import psutil

    mine, found = os.getpid(), []  # found: psutil.Process
    markers = (f"{root}/rollouts/", f"{root}/jobs/", f"{root}/warm/", f"{root}/champions/")
    for p in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if p.info["pid"] == mine or p.info["uids"] is None or p.info["uids"].real != os.getuid():
                continue
            args = [a or "" for a in p.info["cmdline"] or []]
            if not any(m in a for m in markers for a in args) or not any(a.endswith(OURS) for a in args):
                continue
            if p.pid in {a.pid for a in psutil.Process(mine).parents()}:
                continue
            os.kill(p.pid, signal.SIGKILL)
            found.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    psutil.wait_procs(found, timeout=10)  # gone before their files (TSDB lock, SQLite, ports) are reused
    return [p.pid for p in found]


JOB_WORK = "work"  # a training run's work folder in ROOT/jobs/<name>/ (agents/runner.run_candidate's work_dir)


def remove_temp_folders(root: Path) -> None:
    """What the processes of a killed driver left in their temp folders, which the driver puts inside ROOT (a worker
    slot's, a training run's, each service start's): once stop_leftovers has run, nothing of ROOT runs (a warm
    worker also ends by itself when its driver dies), so all of it goes; none is ever left in the system's temp."""
    from cambrian.agents.runner import WarmWorker, run_temp
    from cambrian.online.services import TEMP_MARK

    for slot in root.glob("warm/*"):
        WarmWorker.clear(slot)
    services = [*root.glob(f"rollouts/**/*{TEMP_MARK}*"), *root.glob(f"champions/**/*{TEMP_MARK}*")]
    for folder in [*(run_temp(job / JOB_WORK) for job in root.glob("jobs/*")), *services]:
        shutil.rmtree(folder, ignore_errors=True)
