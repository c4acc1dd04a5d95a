"""The Platform on one machine: the local twin of kubernetes.KubernetesPlatform.

- A training run is today's sandboxed subprocess (cambrian.agents.runner.run_candidate) on a worker
  thread, by default on that thread's warm trainer (`ROOT/warm/<n>/`, README: Warm worker slots); its
  request and its result live in `ROOT/jobs/<name>/` (job.json, result.json), so a run killed with the
  driver (its process dies with it, cold or warm) is started again, under the same name, when the driver
  restarts.
- Bundles: `pvc://CLAIM/PATH` is `ROOT/volumes/CLAIM/PATH` (the cluster's claim, as a folder), so a
  Rollout written for the cluster names the same bundles here; without a claim a bundle is `file://`.
- A rollout gets a folder `ROOT/rollouts/<name>/` with its collector (SQLite), a Prometheus scraping it,
  one `cambrian serve` process per arm and a `cambrian route` router; weights go through the router's
  POST /weights on its admin port, readouts come back through Prometheus' HTTP API, as in the cluster.
- Time is simulated: the driver calls `advance(until)`, which plays the simulated users of every routed
  rollout for each whole day before `until` (traffic.TrafficDriver), closes the day in the collector and
  saves the world's state, so a restart continues with the next day.
- Journal events are appended to `ROOT/events.jsonl`. Each Evolution's champion is served by a
  `cambrian serve` process (its address, bundle and revision in `ROOT/champions/<evolution>.json`); a new
  champion's server starts and answers before the old one stops.

Every process this platform starts has ROOT in its command line; `recover()` (at start) stops the ones
a killed driver left behind, by PID, after checking that.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import httpx
import yaml

from cambrian.errors import CambrianError, ConfigError
from cambrian.operator.api import API_VERSION, duration_seconds
from cambrian.operator.localstore import LocalStore, ParsedFiles, write_atomic
from cambrian.trainer import runstore
from cambrian.operator.platform.base import (MetricsUnavailable, Readout, check_queries, prometheus,
                                             read_gauges)
from cambrian.operator.platform.local_env import (JOB_WORK, PRE_DAYS, RolloutEnv, remove_temp_folders, start_service,
                                                  stop_leftovers)
from cambrian.operator.reconcile import views
from cambrian.operator.reconcile.actions import (
    A_APPROVE,
    A_RETIRED,
    Mark,
    ClearWeights,
    CreateRollout,
    CreateTrainingJob,
    DeleteArm,
    DeleteJob,
    DeployArm,
    Owner,
    ProposeHypotheses,
    RecordJournal,
    RetireRollout,
    RouteChampion,
    SetWeights,
    UpdateChampion,
)
from cambrian.operator.reconcile.common import data_snapshot
from cambrian.operator.reconcile.observations import ArmObservation, ChampionObservation, JobObservation
from cambrian.operator.reconcile.rollout import CONCLUDED

log = logging.getLogger("cambrian.local")

# Simulated time: clock day 0 starts here. The collector counts world days; a rollout maps its first
# routed clock day to the world's next day (see RolloutEnv).
SIM_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
MAX_RESTARTS = 2  # times an unfinished training run is started again after a driver restart
CLOSE_WAIT_S = 10.0  # how long close() waits for the training threads it stopped to return


def _count_restart(folder: Path) -> int:
    """This run's restarts so far, this one included (ROOT/jobs/<name>/restarts, written before it runs)."""
    mark = folder / "restarts"
    count = (int(mark.read_text()) if mark.is_file() else 0) + 1
    write_atomic(mark, f"{count}\n")
    return count


NO_ARM_URL = "http://127.0.0.1:9"  # an arm deleted before a restart: weight 0, never called


def clock_day(t: datetime) -> int:
    return (t - SIM_EPOCH) // timedelta(days=1)


def day_start(day: int) -> datetime:
    return SIM_EPOCH + timedelta(days=day)


def local_path(uri: str, root: Path) -> Path | None:
    """The folder a bundle URI names on this machine; None for schemes that cannot be served here."""
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://"):].partition("/")
        return root / "volumes" / claim / path
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    return None


class LocalPlatform:
    """Platform (operator/platform/base.py) on this machine. `proposer(action, existing) -> ProposalBatch`."""

    def __init__(self, root: str | Path, store: LocalStore, clock: Callable[[], datetime], *,
                 proposer: Any = None, data_dir: str | Path | None = None, workers: int = 1,
                 limits: Any = None, readout_wait_s: float = 30.0, train_command: list[str] | None = None,
                 warehouse: Any = None, promql_url: str | None = None, warm: bool = True,
                 warm_cache: int = 4, warm_zygote: bool = True):
        self.root = Path(root).resolve()
        self.store = store
        self.clock = clock
        self.proposer = proposer
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.limits = limits
        self.readout_wait_s = readout_wait_s
        self.train_command = train_command
        self.warehouse = warehouse  # online/warehouse.Warehouse for every rollout's metrics and simulated users
        self.promql_url = promql_url  # the user's own Prometheus for PromQL metrics (None: each rollout's own)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="train")
        # warm training (trainer/warm.py): one warm trainer process per worker thread, for the default command
        self.warm = warm and train_command is None
        self.warm_cache = warm_cache  # prepared training rows each warm trainer keeps (0: none)
        self.warm_zygote = warm_zygote  # its steps fork from a zygote (trainer/zygote.py), else bubblewrap spares
        self._slot = threading.local()
        self._warm_workers: list[Any] = []
        self._running: dict[str, Future] = {}
        self._job_files = ParsedFiles(json.loads)  # job.json and result.json, read at every pass
        self._lock = threading.Lock()
        self._data_lock = threading.Lock()
        self._closing = False
        self.envs: dict[str, RolloutEnv] = {}
        self.champions: dict[str, _Champion] = {}  # evolution -> its production model server

    # --- lifecycle -----------------------------------------------------------------------------
    def recover(self) -> None:
        """After a restart: stop what a killed driver left running, then re-run its unfinished training. A run
        cut off by MAX_RESTARTS restarts fails instead (like a Job's backoffLimit), so a candidate that takes
        the driver down with it (the machine's memory, say) cannot do so at every start; the reconcile core
        then treats it as any infrastructure failure (a new attempt, up to spec.training.maxAttempts)."""
        stop_leftovers(self.root)
        remove_temp_folders(self.root)
        for job in sorted((self.root / "jobs").glob("*/job.json")):
            folder = job.parent
            if (folder / "result.json").is_file():
                continue
            restarts = _count_restart(folder)
            if restarts > MAX_RESTARTS:
                log.warning("training run %s was cut off by %d restarts; not running it again", folder.name, restarts)
                now = datetime.now(timezone.utc).isoformat()
                result = {"state": "Failed", "exit_code": None, "reason": "BackoffLimitExceeded", "started_at": now,
                          "finished_at": now, "message": f"cut off by {restarts} restarts of the driver"}
                write_atomic(folder / "result.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
                continue
            log.info("training run %s was cut off by a restart; running it again", folder.name)
            self._start(folder.name, json.loads(job.read_text()))

    def close(self) -> None:
        self._closing = True
        for env in self.envs.values():
            env.stop()
        self.envs.clear()
        for champion in self.champions.values():
            champion.stop()
        self.champions.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        # Training children are stopped and their threads then return and record nothing. Until every thread
        # has returned, one may be starting its child (or preparing its work folder): a driver started after
        # this one ended (in this process: a test, a notebook) runs the same run again in that folder, and two
        # runs in one folder failed each other (File exists: work/data). So stop children until all returned.
        deadline = time.monotonic() + CLOSE_WAIT_S
        while True:
            stop_leftovers(self.root)
            with self._lock:
                pending = [f for f in self._running.values() if not f.done()]
            if not pending or time.monotonic() > deadline:
                break
            futures_wait(pending, timeout=0.2)
        for worker in self._warm_workers:
            worker.stop()

    def busy(self) -> bool:
        """Real-time work in flight (training, a champion's server starting): the simulated clock waits for it."""
        for evolution, c in list(self.champions.items()):
            self._settle_champion(evolution, c)
        if any(c.starting is not None for c in self.champions.values()):
            return True
        with self._lock:
            return any(not f.done() for f in self._running.values())

    # --- training ------------------------------------------------------------------------------
    def submit_training_job(self, action: CreateTrainingJob) -> None:
        folder = self.root / "jobs" / action.name
        if (folder / "job.json").is_file():
            return  # already exists (running, finished, or re-started by recover())
        request = {
            "name": action.name, "owner": asdict(action.owner), "hypothesis": action.hypothesis,
            "attempt": action.attempt, "baseline": action.baseline, "delta": action.delta,
            "training": action.training, "data": action.data, "bundle_uri": self._bundle_uri(action),
            **({"fidelity": action.fidelity} if action.fidelity is not None else {}),
            **({"data_snapshot": action.data_snapshot} if action.data_snapshot else {}),
        }
        write_atomic(folder / "job.json", json.dumps(request, indent=2, sort_keys=True) + "\n")
        self._start(action.name, request)

    def _bundle_uri(self, action: CreateTrainingJob) -> str:
        if action.storage_claim:
            return f"pvc://{action.storage_claim}/{action.bundle_path}/bundle"
        return f"file://{self.root / 'volumes' / '_local' / action.bundle_path / 'bundle'}"

    def _start(self, name: str, request: dict) -> None:
        with self._lock:
            if name in self._running and not self._running[name].done():
                return
            self._running[name] = self._pool.submit(self._train, name, request)

    def _train(self, name: str, request: dict) -> None:
        from cambrian.agents.runner import RunLimits, run_candidate
        from cambrian.trainer.config import parse_config
        from cambrian.trainer.delta import parse_delta

        folder = self.root / "jobs" / name
        started = datetime.now(timezone.utc)
        result: dict[str, Any]
        try:
            config = parse_config(request["baseline"], "baseline")
            delta = parse_delta(request["delta"]) if request.get("delta") is not None else None
            limits = self.limits or RunLimits()
            deadline = duration_seconds((request.get("training") or {}).get("activeDeadline", "6h"))
            # spec.training.workers: locally, that many data-parallel worker processes on this machine
            workers = int((request.get("training") or {}).get("workers") or limits.workers)
            limits = limits.model_copy(update={"wall_seconds": min(limits.wall_seconds, deadline), "workers": workers})
            data = self.data_for(request.get("data") or {}, request.get("data_snapshot"))
            key = runstore.run_key(request, data, self.train_command) if runstore.reusable(request) else None
            stored = runstore.lookup(self.root, key) if key else None
            if stored is not None:  # this baseline seed was trained on the same data and settings before
                bundle = local_path(request["bundle_uri"], self.root)
                if bundle is not None:
                    runstore.restore(stored, bundle)
                result = {"state": "Succeeded", "exit_code": 0, "metrics": stored["metrics"],
                          "bundle_uri": request["bundle_uri"], "reused": key}
                log.info("training run %s: reusing the stored baseline run %s", name, key)
            else:
                kw: dict[str, Any] = {"command": self.train_command} if self.train_command else {}
                if request.get("fidelity") is not None:
                    kw["fidelity"] = request["fidelity"]
                worker = self._warm_worker(limits)
                if worker is not None:
                    kw["worker"] = worker
                if self._closing:
                    return  # close() began: recover() re-runs the run
                outcome = run_candidate(config, delta, data, folder / JOB_WORK, limits, **kw)
        except ConfigError as exc:  # the config or delta does not parse: what `cambrian train` exits 2 for
            result = {"state": "Failed", "exit_code": 2, "stage": "parse", "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a broken platform (no world, disk full) fails this run only
            if self._closing:
                return  # close() stopped this slot's warm trainer under it: recover() re-runs the run
            result = {"state": "Failed", "exit_code": None, "reason": "PlatformError", "message": str(exc)}
        else:
            if stored is None:
                if self._closing:
                    return  # killed by close(): not the candidate's failure; recover() re-runs it
                result = self._result(outcome, request)
                bundle = local_path(request["bundle_uri"], self.root)
                if key and result["state"] == "Succeeded" and bundle is not None:
                    try:
                        runstore.keep(self.root, key, result["metrics"], bundle)
                    except OSError as exc:  # another Evolution stored the same run first, or the disk is full
                        log.warning("baseline run %s not stored for reuse: %s", name, exc)
        result.update(started_at=started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat())
        write_atomic(folder / "result.json", json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")

    def _warm_worker(self, limits: Any) -> Any:
        """This worker thread's warm trainer, for a one-process run whose CPU time is bounded by the wall time
        (an explicit RunLimits.cpu_seconds is an rlimit per candidate: those runs stay cold); None: run cold.
        Started again when the limits its launcher applies change."""
        if not self.warm or limits.workers != 1 or limits.cpu_seconds is not None:
            return None
        from cambrian.agents.runner import WarmWorker

        launch = limits.model_copy(update={"wall_seconds": 1.0})
        worker = getattr(self._slot, "worker", None)
        if worker is not None and worker.limits != launch:
            worker.stop()
            worker = None
        if worker is None:
            with self._lock:
                n = len(self._warm_workers)
                # not under jobs/: that folder holds one folder per training run (what a resume and a report count)
                worker = WarmWorker(self.root / "warm" / str(n), launch, self.warm_cache, self.warm_zygote)
                self._warm_workers.append(worker)
            self._slot.worker = worker
        return worker

    def _result(self, outcome: Any, request: dict) -> dict[str, Any]:
        if not outcome.ok:
            f = outcome.failure
            reason = {"timeout": "DeadlineExceeded", "memory": "OOMKilled"}.get(f.stage, "Error")
            return {"state": "Failed", "exit_code": f.exit_code, "reason": reason, "stage": f.stage,
                    "message": f.reason}
        bundle = local_path(request["bundle_uri"], self.root)
        produced = Path(outcome.out_dir) / "bundle"
        if bundle is not None and produced.is_dir():
            if bundle.exists():
                shutil.rmtree(bundle)
            bundle.parent.mkdir(parents=True, exist_ok=True)
            os.replace(produced, bundle)
        return {"state": "Succeeded", "exit_code": 0, "metrics": outcome.metrics, "bundle_uri": request["bundle_uri"]}

    def training_jobs(self, owner: Owner) -> list[JobObservation]:
        out = []
        for job in sorted((self.root / "jobs").glob("*/job.json")):
            request = self._job_files.read(job)
            if request is None:  # deleted since the glob
                continue
            if request["owner"]["uid"] != owner.uid:
                continue
            name = request["name"]
            r = self._job_files.read(job.parent / "result.json")
            if r is None:  # no result yet
                with self._lock:
                    fut = self._running.get(name)
                broken = fut.exception() if fut is not None and fut.done() and not fut.cancelled() else None
                if broken is not None:  # the platform itself failed (not the candidate): retried by the core
                    out.append(JobObservation(name, "Failed", reason="PlatformError", message=str(broken)))
                else:
                    out.append(JobObservation(name, "Running"))
                continue
            out.append(JobObservation(
                name, r["state"], exit_code=r.get("exit_code"), reason=r.get("reason"), message=r.get("message"),
                stage=r.get("stage"), metrics=r.get("metrics"), bundle_uri=r.get("bundle_uri"),
                started_at=views.parse_time(r.get("started_at")), finished_at=views.parse_time(r.get("finished_at")),
                reused=r.get("reused")))
        return out

    def delete_job(self, action: DeleteJob) -> None:
        folder = self.root / "jobs" / action.name
        with self._lock:
            running = action.name in self._running and not self._running[action.name].done()
        if not running:
            shutil.rmtree(folder, ignore_errors=True)
            for name in ("job.json", "result.json"):
                self._job_files.forget(folder / name)

    # --- data ------------------------------------------------------------------------------------
    def data_for(self, data: Mapping[str, Any], snapshot: str | None = None) -> Path:
        """The world data a run trains on: --data, a claim's folder, the snapshot of the Evolution's own source
        (`snapshot`, reconcile.common.data_snapshot: the folder under ROOT that every run of the Evolution reads),
        or a world generated once per spec."""
        if self.data_dir is not None:
            return self.data_dir
        pvc = data.get("persistentVolumeClaim")
        if pvc:
            path = self.root / "volumes" / pvc["claimName"] / (pvc.get("path") or "")
            if not (path / "world.json").is_file():
                raise ConfigError(f"data volume {pvc['claimName']}: {path} holds no world data (world.json)")
            return path
        source = data.get("source")
        if source:
            from cambrian.trainer.fetch import fetch
            from cambrian.trainer.schema import declaration_of

            if not snapshot:
                raise ConfigError(f"{source['uri']}: no snapshot folder named for the Evolution's source")
            # fetched by the first run, then kept (a kill mid-fetch leaves none); credentials come from this
            # process's environment, as the Secret's keys do in a cluster
            path = self.root / snapshot
            with self._data_lock:
                fetch(source["uri"], path, declaration_of(data.get("declaration"), data.get("customDeclaration")))
            return path
        w = {"users": 2000, "days": 14, "seed": 0, **(data.get("world") or {})}
        path = self.root / "data" / f"world-u{w['users']}-d{w['days']}-s{w['seed']}"
        with self._data_lock:
            if not (path / "world.json").is_file():
                from cambrian.world.generate import generate

                tmp = path.with_name(path.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)
                generate(tmp, n_users=int(w["users"]), days=int(w["days"]), seed=int(w["seed"]), force=True)
                os.replace(tmp, path)  # all or nothing: a kill mid-generation leaves no half world
        return path

    def _world_of(self, rollout: str) -> Path:
        obj = self.store.get("rollouts", "default", rollout) or {}
        ref = ((obj.get("spec") or {}).get("evolutionRef") or {}).get("name")
        evo = self.store.get("evolutions", "default", ref) if ref else None
        if evo is None and self.data_dir is None:
            raise ConfigError(f"rollout {rollout}: no Evolution {ref!r} to take the world data from",
                              hint="pass --data DIR (a `cambrian world generate` folder)")
        data = ((evo or {}).get("spec") or {}).get("data") or {}
        return self.data_for(data, data_snapshot(((evo or {}).get("metadata") or {}).get("uid", ""), data))

    # --- serving ---------------------------------------------------------------------------------
    def _state(self, rollout: str) -> RolloutEnv:
        """The rollout's environment (no process started); a concluded rollout's is parked here."""
        env = self.envs.get(rollout)
        if env is None:
            folder = self.root / "rollouts" / rollout
            if not folder.is_dir() and self._concluded(rollout):
                folder.mkdir(parents=True)
            env = self.envs[rollout] = RolloutEnv(rollout, folder, self._world_of(rollout), self.warehouse)
        if not env.state.parked and self._concluded(rollout):
            self._park(env)
        return env

    def _env(self, rollout: str) -> RolloutEnv:
        env = self._state(rollout)
        env.start_metrics()
        return env

    def _concluded(self, rollout: str) -> bool:
        obj = self.store.get("rollouts", "default", rollout) or {}
        return (obj.get("status") or {}).get("phase") in CONCLUDED

    def _park(self, env: RolloutEnv) -> None:
        """A concluded rollout has no users of its own any more (its decision is applied by the Evolution):
        stop its processes and remember the arms and weights the core set last, so that it sees them as it
        left them and no day is played for it again."""
        env.state.parked_arms = sorted(a for a, s in env.arms.items() if s.proc is not None and s.proc.poll() is None) \
            if env.arms else list(env.state.parked_arms)
        if env.router is not None and env.router.proc.poll() is None:
            env.state.parked_weights = self._read_weights(env)
        env.state.parked = True
        env.stop()
        env.save()

    def deploy_arm(self, action: DeployArm) -> None:
        from cambrian.online.services import ServiceProcess

        if self._state(action.rollout).state.parked:
            env = self.envs[action.rollout]
            env.state.parked_arms = sorted({*env.state.parked_arms, action.arm})
            env.save()
            return
        env = self._env(action.rollout)
        running = env.arms.get(action.arm)
        if running is not None and running.proc.poll() is None:
            return
        path = local_path(action.bundle, self.root)
        if path is None or not (path / "bundle.json").is_file():
            raise CambrianError(f"rollout {action.rollout}: arm {action.arm}: bundle {action.bundle} cannot be served "
                                f"here ({path or 'unknown scheme'} holds no bundle.json)")
        env.arms[action.arm] = start_service(ServiceProcess(
            action.name, ["serve", "--bundle", str(path), "--arm", action.arm], env.services,
            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}))
        env.state.arm_urls[action.arm] = env.arms[action.arm].url
        env.save()

    def arms(self, owner: Owner) -> dict[str, ArmObservation]:
        if self._concluded(owner.name) or (self.root / "rollouts" / owner.name / "env.json").is_file():
            env = self._state(owner.name)
            if env.state.parked:
                return {arm: ArmObservation(arm, True, True) for arm in env.state.parked_arms}
        env = self.envs.get(owner.name)
        if env is None:
            return {}
        return {arm: ArmObservation(s.name, True, s.proc.poll() is None)
                for arm, s in env.arms.items() if s.proc is not None and s.proc.poll() is None}

    def delete_arm(self, action: DeleteArm) -> None:
        env = self.envs.get(action.rollout)
        if env is not None and env.state.parked:
            env.state.parked_arms = [a for a in env.state.parked_arms if a != action.arm]
            env.save()
        elif env is not None and action.arm in env.arms:
            env.arms.pop(action.arm).stop()

    def set_weights(self, action: SetWeights) -> None:
        from cambrian.online.services import ServiceProcess

        weights = action.as_dict()
        if self._state(action.rollout).state.parked:
            env = self.envs[action.rollout]
            env.state.parked_weights = weights
            env.save()
            return
        env = self._env(action.rollout)
        # each arm's users go to the server of its entry's service: a stopped A/B/n arm's are control's
        servers = {s.name: s for s in env.arms.values()}
        urls = {}
        for w in action.weights:
            s = servers.get(w.service)
            if w.weight and s is None:
                raise CambrianError(f"rollout {action.rollout}: arm {w.arm} gets {w.weight}% but its server "
                                    f"{w.service} is not running")
            urls[w.arm] = s.url if s is not None else env.state.arm_urls.get(w.arm, NO_ARM_URL)
        if env.router is not None and env.router.proc.poll() is None:
            r = httpx.post(env.router.admin_url + "/weights", json={"weights": weights, "phase": action.phase, "urls": urls},
                           timeout=10)
            if r.status_code != 200:
                raise CambrianError(f"router of {action.rollout} refused weights {weights}: {r.text[:300]}")
            return
        arms = [{"name": w.arm, "url": urls[w.arm], "weight": w.weight, **({"control": True} if i == 0 else {})}
                for i, w in enumerate(action.weights)]
        config = env.dir / "router.yaml"
        write_atomic(config, yaml.safe_dump({"experiment": action.rollout, "salt": action.salt, "phase": action.phase,
                                             "collector": env.collector.url, "arms": arms}, sort_keys=False))
        env.router = start_service(ServiceProcess("router", ["route", "--config", str(config)], env.services))
        if env.state.clock_day0 is None:  # users are routed from today on
            from cambrian.world.sim import World

            env.state.clock_day0 = clock_day(self.clock())
            env.state.world_day0 = World.load(env.world_dir, state_dir=self._world_state(env)).day
            env.save()

    def clear_weights(self, action: ClearWeights) -> None:
        env = self.envs.get(action.rollout)
        if env is not None and env.state.parked:
            env.state.parked_weights = None
            env.save()
        if env is not None and env.router is not None:
            env.router.stop()
            env.router = None
        (self.root / "rollouts" / action.rollout / "router.yaml").unlink(missing_ok=True)

    def router_weights(self, owner: Owner, serving: Mapping[str, Any]) -> dict[str, int] | None:
        if self._concluded(owner.name) or (self.root / "rollouts" / owner.name / "env.json").is_file():
            env = self._state(owner.name)
            if env.state.parked:
                return env.state.parked_weights
        env = self.envs.get(owner.name)
        if env is None or env.router is None or env.router.proc.poll() is not None:
            return None
        return self._read_weights(env)

    def router_ready(self, owner: Owner) -> bool:
        env = self.envs.get(owner.name)
        return env is not None and env.router is not None and env.router.proc.poll() is None

    def http_route(self, owner: Owner, serving: Mapping[str, Any]) -> None:
        """No Gateway API route here, and nothing to share: each live rollout plays its own simulated users (its own
        world, `_play_day`), so no rollout ever waits for another (reconcile/httproute.py)."""
        return None

    def router_services(self, owner: Owner, serving: Mapping[str, Any]) -> dict[str, str] | None:
        env = self.envs.get(owner.name)
        if env is None or env.state.parked or env.router is None or env.router.proc.poll() is not None:
            return None  # parked: concluded, its users are no longer routed
        try:
            urls = httpx.get(env.router.admin_url + "/weights", timeout=10).json()["urls"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None  # unreadable: the core sets them again
        names = {s.url: s.name for s in env.arms.values()}
        return {arm: names.get(url, url) for arm, url in urls.items()}  # a URL no server has: none of its arms

    def _read_weights(self, env: RolloutEnv) -> dict[str, int] | None:
        try:
            weights = httpx.get(env.router.admin_url + "/weights", timeout=10).json()["weights"]
            return {k: int(v) for k, v in weights.items()}
        except (httpx.HTTPError, ValueError, KeyError):
            return None  # unreadable: the core sets them again

    # --- simulated time ----------------------------------------------------------------------------
    def routed(self) -> list[str]:
        """Rollouts whose users are being routed (simulated traffic flows when the clock moves)."""
        return sorted(n for n, e in self.envs.items()
                      if not e.state.parked and e.router is not None and e.router.proc.poll() is None)

    def _world_state(self, env: RolloutEnv) -> Path | None:
        folder = env.dir / "world"
        return folder if (folder / "state.npz").is_file() else None

    def advance(self, until: datetime) -> None:
        """Play every whole clock day before `until` for each routed rollout, one day at a time."""
        for name in self.routed():
            env = self.envs[name]
            while env.state.clock_day0 is not None and day_start(env.state.clock_day0 + env.state.days_done + 1) <= until:
                self._play_day(env)

    def _play_day(self, env: RolloutEnv) -> None:
        from cambrian.online.traffic import TrafficDriver, seed_pre_period
        from cambrian.world.sim import STATE_FILE, World

        sink = _warehouse_sink(env)
        if not env.state.pre_period:
            # batch id and day: sent once however often
            seed_pre_period(env.world_dir, env.collector.url, days=PRE_DAYS, sink=sink)
            env.state.pre_period = True
            env.save()
        world = World.load(env.world_dir, state_dir=self._world_state(env))
        expected = env.state.world_day0 + env.state.days_done
        if world.day != expected:
            raise CambrianError(f"rollout {env.name}: world state is at day {world.day}, expected {expected}")
        driver = TrafficDriver(world, env.router.url, env.collector.url, router_admin_url=env.router.admin_url,
                               run_id=env.name, sink=sink)
        try:
            summary = driver.run_day()  # the collector takes each day's batch once: a replayed day adds nothing
        finally:
            driver.close()
        world.save_state(env.dir / "world" / STATE_FILE)
        env.state.days_done += 1
        env.save()
        log.info("rollout %s: simulated day %s: %s", env.name, summary.day, summary.arms)

    # --- metrics ---------------------------------------------------------------------------------
    def prometheus_readout(self, rollout: str, gauges: Mapping[str, Mapping[str, str]] | None = None) -> Readout:
        from cambrian.online.prometheus import ExperimentReadout

        env = self.envs.get(rollout)
        if env is None or env.prometheus is None:
            raise MetricsUnavailable(f"no Prometheus runs for rollout {rollout}")
        want = (env.state.world_day0 or 0) + env.state.days_done - 1  # the last day played
        with prometheus(env.prometheus.url) as client:
            deadline = time.monotonic() + self.readout_wait_s
            while True:
                r = client.read_experiment(rollout)
                if r.closed_day >= want or env.state.days_done == 0:  # nothing played yet: nothing to wait for
                    break
                if time.monotonic() > deadline:
                    raise MetricsUnavailable(f"prometheus has day {r.closed_day} closed, not yet day {want}")
                time.sleep(0.25)
            values = read_gauges(client, self.promql_url, gauges, r.time)
        return ExperimentReadout(r.experiment, r.time, r.closed_day, r.stats, r.exposures, r.cohorts, values)

    def check_promql(self, rollout: str, queries: Mapping[str, str]) -> None:
        env = self.envs.get(rollout)
        url = self.promql_url or (env.prometheus.url if env is not None and env.prometheus is not None else None)
        if url is None:
            raise MetricsUnavailable(f"no Prometheus runs for rollout {rollout} yet")
        check_queries(url, queries)

    # --- the loop --------------------------------------------------------------------------------
    def create_rollout(self, action: CreateRollout) -> None:
        self.store.create({"kind": "Rollout", "metadata": {"name": action.name,
                                                           "labels": {"cambrian.dev/hypothesis": action.hypothesis},
                                                           **({"annotations": dict(action.annotations)}
                                                              if action.annotations else {})},
                           "spec": action.spec}, self.clock(), action.owner)

    def retire_rollout(self, action: RetireRollout) -> None:
        self.store.annotate("Rollout", action.name, {A_APPROVE: "rollback",
                                                     A_RETIRED: action.reason[:1024] or "left the top K"})

    def mark(self, action: Mark) -> None:
        self.store.annotate(action.kind, action.name, {action.annotation: action.value})

    def update_champion(self, action: UpdateChampion) -> None:
        """Start a model server on the champion's bundle and return: like a Deployment's rolling update, the one in
        production keeps serving until the new one answers /healthz (`champion_serving` then publishes its URL in
        `ROOT/champions/<evolution>.json` and stops the old one). The driver's clock waits meanwhile (`busy`)."""
        from cambrian.online.services import ServiceError, ServiceProcess

        evolution = action.owner.name
        old = self.champions.get(evolution)
        if old is not None and old.revision == action.revision and old.alive():
            return
        serving = None if old is None else old.serving()
        if old is not None:
            old.stop(keep=serving)  # a server that was still starting for an earlier revision
        path = local_path(action.bundle, self.root)
        try:
            if path is None or not (path / "bundle.json").is_file():
                raise ServiceError(f"bundle {action.bundle} cannot be served here "
                                   f"({path or 'unknown scheme'} holds no bundle.json)")
            proc = ServiceProcess(
                f"server-{action.revision[:12]}", ["serve", "--bundle", str(path), "--arm", "champion"],
                self.root / "champions" / evolution, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}).start()
        except (ServiceError, OSError) as exc:  # as a pod that never gets ready: the old server keeps serving
            self.champions[evolution] = _Champion(None, action.name, action.revision, action.bundle,
                                                  _not_started(exc), serving)
            return
        published = {"name": action.champion, "bundle": action.bundle, "hypothesis": action.hypothesis,
                     "rollout": action.rollout, "path": str(path), "revision": action.revision}
        self.champions[evolution] = _Champion(proc, action.name, action.revision, action.bundle, None, serving,
                                              starting=time.monotonic(), published=published)

    def _settle_champion(self, evolution: str, c: "_Champion") -> None:
        """A starting server that answers now is published and replaces the old one; one that exited, or does not
        answer within READY_TIMEOUT_S, is stopped and reported (the old one keeps serving)."""
        from cambrian.online.services import READY_TIMEOUT_S, ServiceError

        if c.starting is None:
            return
        try:
            if not c.proc.ready():
                if time.monotonic() - c.starting < READY_TIMEOUT_S:
                    return
                raise ServiceError(f"{c.proc.name} not ready after {READY_TIMEOUT_S:g} s; see {c.proc.log_path}")
        except ServiceError as exc:
            c.proc.stop()
            c.proc, c.blocked, c.starting = None, _not_started(exc), None
            return
        write_atomic(self.root / "champions" / f"{evolution}.json", json.dumps(
            {**c.published, "url": c.proc.url, "since": self.clock().isoformat()}, indent=2) + "\n")
        if c.previous is not None:
            c.previous.stop()
        c.previous, c.starting = None, None

    def champion_serving(self, owner: Owner, serving: Mapping[str, Any]) -> ChampionObservation | None:
        """(No HTTPRoute here: `routed` stays None, so the core never asks route_champion.)"""
        c = self.champions.get(owner.name)
        if c is not None:
            self._settle_champion(owner.name, c)
        if c is not None and c.blocked:
            return ChampionObservation(c.name, c.revision, c.bundle, False, c.blocked)
        if c is None or not c.alive():
            return None  # never started, stopped with an earlier driver, or died: the core starts it again
        return ChampionObservation(c.name, c.revision, c.bundle, c.starting is None)

    def route_champion(self, action: RouteChampion) -> None:
        """Local mode has no Gateway API route: callers reach the champion at its URL (champions/*.json)."""

    def propose(self, action: ProposeHypotheses) -> None:
        from cambrian.operator.proposing import propose_wakeup

        existing = [h for h in self.store.list("hypotheses")
                    if ((h.get("spec") or {}).get("evolutionRef") or {}).get("name") == action.owner.name]
        if self.proposer is None:
            self.record(RecordJournal(action.owner, "NoProposer", "no proposer configured", {}, True))
            return

        def create(name: str, spec: dict, labels: dict, annotations: dict) -> bool:
            self.store.create({"kind": "Hypothesis", "apiVersion": API_VERSION,
                               "metadata": {"name": name, "labels": labels, "annotations": annotations},
                               "spec": spec}, self.clock(), action.owner)
            return True

        def charge(wakeup: int, tokens: int, dollars: float) -> None:
            evo = self.store.get("evolutions", action.owner.namespace or "default", action.owner.name)
            if evo is None:
                return
            value = views.charge_unattributed((evo.get("metadata") or {}).get("annotations"), wakeup, tokens, dollars)
            if value is not None:
                self.store.annotate("Evolution", action.owner.name, {views.A_UNATTRIBUTED: value})

        made = propose_wakeup(action, existing, self.proposer, _FileRecord(self.root / "proposals"), create, charge)
        if made is not None:
            self.record(RecordJournal(action.owner, "Proposed", made[0], {}, made[1]))

    def record(self, action: RecordJournal) -> None:
        o = action.owner
        row = {"time": self.clock().isoformat(), "kind": o.kind, "name": o.name, "event": action.event,
               "message": action.message, "warning": action.warning, "data": action.data}
        log.info("%s %s: %s %s", o.kind, o.name, action.event, action.message)
        path = self.root / "events.jsonl"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")


class _FileRecord:
    """A wake-up's proposals between asking and creating (operator/proposing.propose_wakeup), one file each."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load(self, prefix: str) -> dict[str, Any] | None:
        path = self.folder / f"{prefix}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, prefix: str, record: dict[str, Any]) -> None:
        write_atomic(self.folder / f"{prefix}.json", json.dumps(record, sort_keys=True))

    def drop(self, prefix: str) -> None:
        (self.folder / f"{prefix}.json").unlink(missing_ok=True)


@dataclass
class _Champion:
    """An Evolution's production model server for `revision`: `starting` (time.monotonic()) until it answers, with
    `previous`, the one it replaces, serving meanwhile; `blocked`: why it did not start (then `previous` keeps
    serving)."""

    proc: Any  # ServiceProcess, or None when it did not start
    name: str
    revision: str
    bundle: str
    blocked: str | None = None
    previous: Any = None
    starting: float | None = None
    published: dict[str, Any] = field(default_factory=dict)  # champions/<evolution>.json once it answers

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def serving(self) -> Any:
        """The server production reaches now."""
        return self.proc if self.alive() and self.starting is None else self.previous

    def stop(self, keep: Any = None) -> None:
        for p in (self.proc, self.previous):
            if p is not None and p is not keep:
                p.stop()


def _not_started(exc: Exception) -> str:
    why = str(exc).strip().splitlines()
    return f"the model server did not start: {why[-1] if why else exc}"[:1024]


def _warehouse_sink(env: RolloutEnv) -> Callable[[Any], Any] | None:
    """The simulated users' days into the warehouse's event table (None without one). A warehouse that is down
    stops the run with one line; the day is played again when the run resumes, and lands once."""
    if env.warehouse is None:
        return None

    def sink(rows: Any) -> None:
        from cambrian.online.warehouse import WarehouseUnavailable

        try:
            env.warehouse.write_days(rows, env.name)  # keyed by the rollout: its users are its own
        except WarehouseUnavailable as exc:
            raise CambrianError(f"rollout {env.name}: the simulated users' days cannot land in the warehouse: {exc}",
                                hint="start the warehouse (or fix --warehouse-url) and run the same command again: "
                                     "it resumes") from None

    return sink
