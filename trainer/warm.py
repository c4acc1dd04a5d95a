"""Warm training: the start-up of a candidate's run paid before the candidate is known (local worker slots).

A cold run is three fresh Python processes per candidate (the trusted `cambrian train`, the contained trainer,
the contained predictor), each importing torch, plus the data preparation with the reward SQL. Here:
- `serve` is a long-lived trusted process per worker slot (agents/runner.py WarmWorker starts it with the
  cold run's limits and cleaned environment): it runs `cambrian train` requests one after another, by the
  same CLI code, so the project (data, reward SQL, scoring) is imported once per slot. It never runs candidate
  code and never imports torch (trainer/train.py): only the zygote and the steps forked from it do.
- `WarmPool` runs each step (trainer, predictor) in a fork of its zygote (trainer/zygote.py: torch imported
  once, in a trusted process that never opens candidate data), which contains itself with the operating system
  (the namespaces, file system, seccomp filter and limits of the bubblewrap sandbox) before the step's command
  runs, once the trusted side has filled its input folder. Where the zygote cannot be made ready, or with
  zygote=False: one pre-started contained process per step, bubblewrap sandbox and seccomp filter as in the
  cold path, torch imported, blocked on its stdin (trainer/contained.py `warm`); its input folder was bound
  read-only when it was created; the trusted side fills it, then writes the one command. Either way a step runs
  one command and ends; its whole tree is killed after it, and no process is given a second candidate.
- `PreparedCache` keeps the prepared training rows per (data files, the config fields that change rows): a
  candidate's input folder gets hard links to them, bound read-only into its sandbox (it can read them, and
  neither it nor any later candidate can write them).
In the cluster each candidate is a Job's pod: none of this applies there.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

from cambrian.trainer.sandbox import ContainedResult, file_tail, start_contained, stop_contained

READY_SECONDS = 300.0  # a spare that has not imported torch by then is broken: the step runs cold instead
STEPS = ("training", "scoring")
SPARES = "spares.json"  # in the pool folder: the idle spares' and the zygote's PIDs (WarmPool._record_spares)
# Fields that decide which rows prepare() writes and how it labels them are everything but these (so a
# field added later is part of the key until it is listed here).
ROW_NEUTRAL = {"optimizer": None, "architecture": None,
               "training": ("epochs", "batch_size", "seed", "grad_clip", "device", "cpu_threads", "shuffle_row_groups")}


class WarmPool:
    """Pre-started single-use sandboxes for runs with the same limits (SandboxLimits). CPU runs only. With
    `zygote` (the default where the kernel allows it), each step is a fork of the pool's zygote that contains
    itself (trainer/zygote.py); else, or when the zygote cannot be (re)started, one spare bubblewrap sandbox per
    step."""

    def __init__(self, root: Path, limits, cache_size: int = 4, zygote: bool = True):
        self.root = root
        self.limits = limits
        self._spares: dict[str, object] = {}
        self._count = 0
        self.cache = PreparedCache(root / "prepared", cache_size)
        self.use_zygote = zygote
        self.zygote = None
        self.stats = {"warm": 0, "cold": 0, "spares_started": 0, "zygote": 0, "zygote_starts": 0}

    def _new(self, step: str):
        from cambrian.trainer.train import _Contained

        self._count += 1
        c = _Contained(self.root, f"{step}-{self._count}", True, self.limits, gpu=False)
        c.input.mkdir(parents=True)
        return c

    def _start(self, step: str):
        c = self._new(step)
        c.warm = start_contained(c.input, c.scratch, c.argv("warm", cpu_only=True), c.environment(), c.log)
        self.stats["spares_started"] += 1
        return c

    def _start_zygote(self) -> None:
        from cambrian.trainer.train import _Contained
        from cambrian.trainer.zygote import Zygote

        self.zygote = Zygote(self.root, _Contained.environment())
        self.stats["zygote_starts"] += 1

    def _zygote(self):
        """The zygote, ready (started again if it died); None, for good, when one cannot be made ready."""
        if self.zygote is not None and not self.zygote.alive():
            self.zygote.close()
            self.zygote = None
        if self.zygote is None:
            self._start_zygote()
            self._record_spares()
        if self.zygote.ready(READY_SECONDS):
            return self.zygote
        print(f"warm pool: the zygote is not usable, steps run in bubblewrap sandboxes: {self.zygote.problem()}",
              file=sys.stderr)
        self.zygote.close()
        self.zygote = None
        self.use_zygote = False
        self.prestart()
        return None

    def take(self, step: str):
        """A sandbox for `step` (of STEPS), handed out once. On the zygote path: a step its child will run in.
        Else a pre-started one; once it is ready a new spare starts, which imports while this candidate runs. A
        spare that never got ready is killed and the step runs cold."""
        if self.use_zygote:
            from cambrian.trainer.zygote import ZygoteStep

            zygote = self._zygote()
            if zygote is not None:
                c = self._new(step)
                c.warm = ZygoteStep(zygote, c)
                self.stats["warm"] += 1
                self.stats["zygote"] += 1
                return c
        c = self._spares.pop(step, None) or self._start(step)
        if wait_ready(c.warm, READY_SECONDS):
            self.stats["warm"] += 1
        else:
            stop_contained(c.warm)
            c.warm = None
            self.stats["cold"] += 1
        self._spares[step] = self._start(step)  # after: two sandboxes importing at once would slow both
        self._record_spares()
        return c

    def _record_spares(self) -> None:
        """The idle spares' PIDs and the zygote's, for the runner's memory watchdog: they belong to no candidate,
        so a candidate's tree is counted without the spares' trees and without the zygote itself (its children
        are the candidate's steps) (agents/runner.py WarmWorker.spare_pids)."""
        tmp = self.root / "spares.tmp"
        tmp.write_text(json.dumps({"trees": sorted(c.warm.pid for c in self._spares.values() if c.warm is not None),
                                   "processes": [self.zygote.pid] if self.zygote is not None else []}))
        os.replace(tmp, self.root / SPARES)

    def prestart(self) -> None:
        """The zygote, or a spare for every step, started now (a new worker's, while it imports and prepares on
        its own)."""
        if self.use_zygote:
            if self.zygote is None:
                self._start_zygote()
        else:
            for step in STEPS:
                if step not in self._spares:
                    self._spares[step] = self._start(step)
        self._record_spares()

    def close(self) -> None:
        for c in self._spares.values():
            stop_contained(c.warm)
        self._spares.clear()
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


def wait_ready(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether the pre-started process said `ready` (its imports are done) within `seconds`."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return bool(ready) and proc.stdout.readline().strip() == b"ready"


def release(proc: subprocess.Popen, command: str, wall_seconds: float, log_file: Path) -> ContainedResult:
    """Give a ready sandbox its one command, wait at most wall_seconds, then kill its whole tree. A zygote's
    step (trainer/zygote.py) is forked now and contained by itself, with the same contract."""
    if not isinstance(proc, subprocess.Popen):
        return proc.release(command, wall_seconds, log_file)
    started = time.monotonic()
    timed_out = False
    try:
        proc.stdin.write(f"{command}\n".encode())
        proc.stdin.close()
    except OSError:  # it died while waiting: its exit code says how
        pass
    try:
        proc.wait(timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    rc = stop_contained(proc)
    proc.stdout.close()
    return ContainedResult(rc, time.monotonic() - started, timed_out, file_tail(log_file))


def discard(step) -> None:
    """A step after its run (or unrun): its process tree killed, its folders and log gone (a link into the
    cache goes with its folder; the cache stays)."""
    if isinstance(step.warm, subprocess.Popen):  # a zygote's step has nothing running before or after its run
        stop_contained(step.warm)
        step.warm = None
    shutil.rmtree(step.input, ignore_errors=True)
    shutil.rmtree(step.scratch, ignore_errors=True)
    step.log.unlink(missing_ok=True)


# ---- prepared training rows, shared read-only -------------------------------------------------------------

def rows_key(config, data_dir: str | Path, workers: int, schema=None) -> str | None:
    """The cache key of prepare()'s output: the data files' identities, the declaration given beside them (else the
    one world.json names, a file among them) and the config without the fields that cannot change rows or labels.
    None for a non-local source (its content can change under the same name)."""
    data = Path(str(data_dir))
    if "://" in str(data_dir) or not data.is_dir():
        return None
    files = []
    for f in sorted(data.rglob("*")):  # a table may be a folder of part files
        if f.is_file():
            st = f.stat()
            files.append([str(f.relative_to(data)), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])
    cfg = config.model_dump(mode="json")
    for part, fields in ROW_NEUTRAL.items():
        if fields is None:
            cfg.pop(part, None)
        else:
            for name in fields:
                cfg[part].pop(name, None)
    declared = schema.model_dump(mode="json") if hasattr(schema, "model_dump") else schema
    text = json.dumps({"files": files, "config": cfg, "workers": workers, "schema": declared}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class PreparedCache:
    """prepare()'s Parquet files and data set, per rows_key, the most recent `size` kept."""

    def __init__(self, root: Path, size: int = 4):
        self.root, self.size = root, size
        self._entries: OrderedDict[str, tuple[Path, object]] = OrderedDict()
        self.hits = self.misses = 0

    def prepare(self, data_dir: str | Path, config, folder: Path, workers: int = 1, schema=None):
        """What trainer.data.prepare(data_dir, config, folder, workers, schema) returns and writes, from the cache
        when the same rows were prepared before (hard links into `folder`)."""
        from cambrian.trainer.data import prepare

        key = rows_key(config, data_dir, workers, schema) if self.size > 0 else None
        if key is None:
            return prepare(data_dir, config, folder, workers, schema)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            self.misses += 1
            entry = self.root / key
            shutil.rmtree(entry, ignore_errors=True)
            data = prepare(data_dir, config, entry, workers, schema)
            for f in entry.iterdir():
                f.chmod(0o444)
            self._entries[key] = (entry, data)
            while len(self._entries) > self.size:
                _, (old, _) = self._entries.popitem(last=False)
                shutil.rmtree(old, ignore_errors=True)
        entry, data = self._entries[key]
        folder.mkdir(parents=True, exist_ok=True)
        for f in entry.iterdir():
            os.link(f, folder / f.name)
        return data


class Laps:
    """Where one `cambrian train` run's time went, written to OUT/timing.json (the throughput benchmark reads it;
    informational: the contained trainer's phases are its own report). `startup`: from the process's start (a
    cold run: interpreter and imports) or from the warm worker's receipt of the request, to train()."""

    def __init__(self):
        now = time.time()
        begun = REQUEST_STARTED if _POOL is not None and REQUEST_STARTED else _process_started()
        self.seconds: dict[str, float] = {"startup": max(0.0, now - begun)}
        self.inside: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str, result: dict | None = None) -> "Laps":
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + (now - self._last)
        self._last = now
        phases = (result or {}).get("phases")
        if isinstance(phases, dict):
            self.inside = {str(k): float(v) for k, v in phases.items() if isinstance(v, (int, float))}
        return self

    def write(self, out: Path, warm: bool) -> None:
        (out / "timing.json").write_text(json.dumps({
            "warm": warm, "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "trainer_phases": self.inside,
            "cache": {"hits": _POOL.cache.hits, "misses": _POOL.cache.misses} if _POOL else None}, sort_keys=True))


def _process_started() -> float:
    """When this process started (Linux: its /proc entry's ctime), without psutil, which the trainer image lacks."""
    try:
        return os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        return time.time()


# ---- the trusted worker of one slot ------------------------------------------------------------------------

_POOL: WarmPool | None = None
REQUEST_STARTED = 0.0  # time.time() when serve() read the request being run


def pool() -> WarmPool | None:
    """This process's pool when it is a warm worker (`serve`); None in a cold `cambrian train`."""
    return _POOL


def serve(home: Path, cache_size: int = 4, zygote: bool = True) -> None:
    """Answer `cambrian train` requests, one JSON line each on stdin ({"argv": [...], "log": path}), with one
    JSON line on stdout ({"exit_code": n}) when the request is done. Its output goes to the request's log.
    `cache_size` 0: no prepared rows are kept (every candidate prepares its own). `zygote`: steps are forks of
    the pool's zygote (trainer/zygote.py), else pre-started bubblewrap sandboxes."""
    global _POOL, REQUEST_STARTED
    import cambrian.cli as cli
    from cambrian.trainer import train as _train  # noqa: F401  - imported once, here
    from cambrian.trainer.train import SandboxLimits

    home.mkdir(parents=True, exist_ok=True)
    _POOL = WarmPool(home, SandboxLimits(), cache_size, zygote)
    _POOL.prestart()
    from cambrian.trainer import sqlworker

    sqlworker.keep_a_spare()  # each prepare's SQL child started ahead, while the slot waits or trains
    replies = os.fdopen(os.dup(1), "w")
    saved = os.dup(2)
    try:
        for line in sys.stdin:
            REQUEST_STARTED = time.time()
            request = json.loads(line)
            with open(request["log"], "ab") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            sys.argv = ["cambrian", *request["argv"]]
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - our own bug: the log gets it, this worker ends
                import traceback

                traceback.print_exc()
                raise
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved, 1)
                os.dup2(saved, 2)
            replies.write(json.dumps({"exit_code": code, "pool": _POOL.stats,
                                      "cache": {"hits": _POOL.cache.hits, "misses": _POOL.cache.misses}}) + "\n")
            replies.flush()
    finally:
        _POOL.close()


if __name__ == "__main__":  # run as the module itself, so that pool() in train.py sees this process's pool
    from cambrian.trainer import warm as _module

    _module.serve(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 4,
                  (sys.argv[3] if len(sys.argv) > 3 else "zygote") == "zygote")
