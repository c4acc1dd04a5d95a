"""The red-team corpus: attacks an LLM-written candidate could try, each run the three ways a candidate runs
locally — `cambrian train` (the CLI, as a user or the cluster Job runs it), the offline loop's worker
(`agents/runner.py::run_candidate`) cold, and the same on a warm worker slot (`WarmWorker`: a warm trusted
trainer and pre-started single-use bubblewrap sandboxes, trainer/warm.py) and on a warm slot whose steps fork
from its zygote (trainer/zygote.py; what the local platform uses) — asserting that the attack's effect did not
happen and that the verdict came from the scorer.

Every attack is plugin code that passes the static gate (it reaches the OS through modules torch re-exports),
so what stops it is the sandbox, not the source check. Attacks that must run to the end report what they saw
by raising `RuntimeError("REDTEAM ...")`: the failure's reason then proves the code ran, contained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cambrian.agents.runner import RunLimits, WarmWorker, run_candidate
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta
from hostile import plugin_source

PATHS = ("train", "loop", "warm", "zygote")
CANARY_ENV = {"REDTEAM_API_KEY": "sk-REDTEAM-canary-5be1", "OPENAI_API_KEY": "sk-REDTEAM-openai-canary"}
BASE = {"training": {"epochs": 1, "device": "cpu", "cpu_threads": 1, "batch_size": 256}}

# reaches the OS through modules torch re-exports, so the static gate lets it pass
HEADER = """
OS = torch.os
SYS = torch.sys
def imp(name):
    return SYS.modules["importlib"].import_module(name)
"""


def plugin(init: str = "", forward: str = "") -> str:
    """Architecture plugin code with the attack in __init__ (runs in the gate) or forward (runs every batch)."""
    return plugin_source(init, forward, header=HEADER)


@dataclass
class Verdict:
    ok: bool
    stage: str | None
    reason: str
    metrics: dict
    exit_code: int | None


def run_attack(path: str, world: Path, tmp: Path, delta: dict, config: dict | None = None,
               wall_seconds: float = 120, env: dict | None = None, memory_mb: int = 6000) -> Verdict:
    """Run one candidate the given way; what the trusted side concluded."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig.model_validate({**BASE, **(config or {})})
    run_env = {**os.environ, **CANARY_ENV, **(env or {})}
    if path == "train":
        (tmp / "config.json").write_text(cfg.model_dump_json())
        (tmp / "delta.json").write_text(json.dumps(delta))
        proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--data", str(world), "--out",
                               str(tmp / "out"), "--config", str(tmp / "config.json"), "--delta", str(tmp / "delta.json"),
                               "--json", "--wall-seconds", str(wall_seconds), "--memory-mb", str(memory_mb)],
                              capture_output=True, text=True, env=run_env, timeout=wall_seconds * 3 + 120)
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = proc.stdout.strip().splitlines()
        assert lines, f"no result line (exit {proc.returncode}): {proc.stderr[-2000:]}"
        out = json.loads(lines[-1])
        if out.pop("ok"):
            return Verdict(True, None, "", out, proc.returncode)
        return Verdict(False, out["stage"], out["reason"], {}, proc.returncode)
    old = dict(os.environ)
    os.environ.update({**CANARY_ENV, **(env or {})})
    limits = RunLimits(wall_seconds=wall_seconds * 2, threads=1, rss_mb=memory_mb // 2)
    worker = WarmWorker(tmp / "slot", limits, zygote=path == "zygote") if path in ("warm", "zygote") else None
    try:
        res = run_candidate(cfg, parse_delta(delta), world, tmp / "work", limits, worker=worker)
    finally:
        if worker is not None:
            worker.stop()
        os.environ.clear()
        os.environ.update(old)
    if res.ok:
        return Verdict(True, None, "", res.metrics or {}, 0)
    return Verdict(False, res.failure.stage, res.failure.reason, {}, res.failure.exit_code)


CLUSTER_WORLD = {"users": 300, "days": 5, "seed": 3}


def run_attack_in_cluster(cluster, namespace: str, runtime, tmp: Path, delta: dict, timeout_s: float = 600) -> Verdict:
    """The candidate as the operator trains it in the cluster: the training Job's pod (operator/platform/
    kubernetes.py) on the test control plane, its containers run for real by the pod runtime harness; the
    verdict is what the operator reads back (parse_job), which only the scorer container writes."""
    import time as _time

    from cambrian.operator.platform import kubernetes as K
    from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner

    name = f"redteam-{abs(hash(json.dumps(delta, sort_keys=True))) % 10**8}-{int(_time.time()) % 10**5}"
    action = CreateTrainingJob(name, Owner("Hypothesis", "h", "uid-h", namespace), "h", 1, BASE, delta,
                               {"image": "trainer:test", "activeDeadline": "15m", "memory": "1Gi", "cpu": "1",
                                # kwok finishes a Job pod at once unless told to wait for the harness
                                "podAnnotations": {"kwok.cambrian.dev/duration": "1h"}},
                               {"world": CLUSTER_WORLD})
    objs = [K.training_configmap(action), K.training_job(action)]
    for obj in objs:  # no owner here: the garbage collector would remove what points at a missing Hypothesis
        obj["metadata"].pop("ownerReferences", None)
    cluster.apply(objs)
    deadline = _time.monotonic() + timeout_s
    while _time.monotonic() < deadline:
        job = cluster.get_json("job", name, "-n", namespace)
        pods = cluster.get_json("pods", "-n", namespace, "-l", f"job-name={name}")["items"]
        obs = K.parse_job(job, pods)
        if obs.state in ("Succeeded", "Failed"):
            break
        _time.sleep(1)
    else:
        raise AssertionError(f"the training Job did not finish: {runtime.errors} {runtime.runs}")
    if obs.state == "Succeeded":
        return Verdict(True, None, "", obs.metrics or {}, 0)
    return Verdict(False, obs.stage, obs.message or "", {}, obs.exit_code)


def cluster_world_rows(runtime) -> tuple[int, int]:
    """(training rows, held-out rows) of the world the pod runtime generated for CLUSTER_WORLD."""
    import pandas as pd

    (parquet,) = Path(runtime.work, "worlds").glob("*/impressions.parquet")
    imp = pd.read_parquet(parquet)
    n_val = int((imp["day"] == imp["day"].max()).sum())
    return len(imp) - n_val, n_val


def arch(code: str) -> dict:
    return {"component": "architecture", "code": code}


def reported(v: Verdict) -> str:
    """The attack's own report (it ran, contained); fails the test if the attack never ran."""
    assert not v.ok and "REDTEAM" in v.reason, (v.stage, v.reason[:600])
    return v.reason[v.reason.index("REDTEAM"):]
