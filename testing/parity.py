"""One seeded scenario for both platforms (issue 12, deliverable 6): the same Evolution reconciled by the local
driver (operator/local_driver.py over platform/local.py) and by the kopf handlers over the Kubernetes platform,
with the same outcomes of training and the same online readouts, so that the two runs can be compared phase by
phase (tests/parity/).

What is made deterministic, and where it enters each platform (the smallest real seam of each):
- Training: `training_outcome(hypothesis, config)` is the stand-in trainer's result: the baseline scores val_loss
  0.5 + 0.002 x seed (a noise floor of about 0.0035), the i-th proposal of wake-up 1 scores as PLAN[i] says on
  its first seed and on its confirmation seeds (>= 1000), or fails in training (exit 4). Locally it runs as the
  platform's training command (`python -m cambrian.testing.parity train ...`, the contract of `cambrian train`,
  copying a real bundle so arms and the champion can be served); in the cluster, `KwokTrainer` finishes each
  training pod with the same result as its kwok exit code and termination message (the shape the training
  pod's wrapper writes, platform/termination.py).
- Online data: `readout(rollout)` is the per-arm sums a Prometheus readout returns (seeded synthetic users; the
  rollout of proposal 0 lifts watch_minutes by 30 %, the rollout of proposal 1 cuts sessions, a guardrail, by
  40 %). It replaces each platform's `prometheus_readout`, the seam between Prometheus and the core.
- The built-in proposer is seeded by the wake-up, so both platforms get the same five Hypotheses.

`record(kind, obj)` turns a persisted object into its normalized transition (random name suffixes removed), and
`Transitions` keeps each object's sequence of distinct ones; each object's sequence is compared, not the global
interleaving (which in the cluster depends on when each watch event arrives).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

EVOLUTION = "parity"
BASELINE_LOSS = 0.5
BASELINE_SEED_STEP = 0.002  # the baseline's val_loss moves this much per seed: its noise floor
USERS_PER_ARM = 400


@dataclass(frozen=True)
class Plan:
    """What the i-th proposal of wake-up 1 does: val_loss gain over 0.5 on its first seed and on its confirmation
    seeds; `fails`: training exits 4; `online`: its rollout's effect (lifts of watch_minutes and sessions)."""

    gain: float = 0.0
    confirm_gain: float = 0.0
    fails: bool = False
    watch_lift: float = 0.0
    sessions_lift: float = 0.0


PLAN = {
    0: Plan(0.05, 0.05, watch_lift=0.3),           # better; its rollout wins
    1: Plan(0.04, 0.04, sessions_lift=-0.4),       # better; its rollout breaches the sessions guardrail
    2: Plan(0.05, -0.05),                          # promising on one seed, not confirmed: not_better
    3: Plan(-0.03, -0.03),                         # worse: not_better at once, no confirmation
    4: Plan(fails=True),                           # training fails (exit 4): Failed
}
# baseline seeds + one run per proposal + the confirmation seeds of the promising ones: nothing more is trained
EVALUATIONS = 2 + len(PLAN) + sum(1 for p in PLAN.values() if not p.fails and p.gain > 0)


def evolution() -> dict[str, Any]:
    return {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": EVOLUTION},
        "spec": {
            # a deliberately weak baseline (a learning rate far too small); the stand-in trainer scores it
            "baseline": {"optimizer": {"name": "SGD", "lr": 0.0001}, "architecture": {"name": "mlp", "hidden": [8]},
                         "training": {"epochs": 1, "max_train_examples": 2000, "batch_size": 512}},
            "objective": {"northStar": [{"name": "watch_minutes", "direction": "maximize"}]},
            "guardrails": [{"metric": "sessions", "direction": "maximize", "margin": 0.1}],
            "agent": {"provider": "builtin", "personas": ["optimizer"], "proposalsPerWakeup": 5,
                      "quotas": {"explore": 3, "exploit": 1, "innovate": 1},
                      # spent exactly when the last confirmation seed starts: one wake-up on both platforms
                      "budgets": {"evaluations": EVALUATIONS}},
            "topK": 2,
            # reviews far enough apart that every hypothesis is scored before the first one that can start a
            # rollout (the cluster trains in real time), readouts soon after a rollout runs
            "cadence": {"offline": "1h", "online": "30s"},
            "launchPolicy": "auto",
            "training": {"gpu": {"count": 0}, "maxAttempts": 1, "cpu": "1", "memory": "1Gi",
                         # kwok holds the pods until KwokTrainer finishes them
                         "podAnnotations": {"kwok.cambrian.dev/duration": "1h"}},
            "experiment": {"ramp": {"steps": [{"weights": [50, 50], "duration": "1h"}]},
                           "readout": {"interval": "10s"},
                           "statistics": {"minSamplePerArm": 100, "plannedSamplePerArm": USERS_PER_ARM,
                                          "maxDuration": "1h"}},
            "data": {"world": {"users": 100, "days": 3, "seed": 1}},
            "storage": {"claimName": "bundles"},
            "noise": {"baselineSeeds": 2, "confirmSeeds": 1},
        },
    }


def bad_hypothesis() -> dict[str, Any]:
    """A user's Hypothesis whose delta does not apply (a negative learning rate): Rejected before any training."""
    return {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": f"{EVOLUTION}-bad"},
            "spec": {"evolutionRef": {"name": EVOLUTION}, "component": "optimizer",
                     "explanation": "a negative learning rate", "delta": {"patch": {"lr": -1}}}}


# --------------------------------------------------------------------------------------------- training

_PROPOSAL = re.compile(r"-w1-[0-9a-f]{8}-(\d+)(?:-|$)")


def proposal_index(name: str | None) -> int | None:
    """i of wake-up 1's i-th Hypothesis, from its name or a name derived from it (a rollout's)."""
    m = _PROPOSAL.search(name or "")
    return int(m.group(1)) if m else None


def training_outcome(hypothesis: str | None, config: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """(exit code, metrics) of a run, or (4, {"stage", "reason"}) for a failed one. hypothesis None: the baseline."""
    seed = int(((config.get("training") or {}).get("seed")) or 0)
    extra = {"auc": 0.6, "long_watch_corr": 0.1, "return_corr": 0.1, "like_corr": 0.1, "top_watch_share": 0.07}
    if hypothesis is None:
        return 0, {"val_loss": BASELINE_LOSS + BASELINE_SEED_STEP * seed, **extra}
    i = proposal_index(hypothesis)
    plan = PLAN.get(i) if i is not None else None
    if plan is None:
        return 4, {"stage": "training", "reason": f"hypothesis {hypothesis} is not in the parity scenario"}
    if plan.fails:
        return 4, {"stage": "training", "reason": "loss is NaN at step 3"}
    gain = plan.confirm_gain if seed >= 1000 else plan.gain
    return 0, {"val_loss": BASELINE_LOSS - gain, **extra}


def termination_message(code: int, result: Mapping[str, Any]) -> str:
    """The training pod's termination message for this result, written by the pod wrapper's own code
    (platform/termination.py) from the files `cambrian train` leaves: OUT/metrics.json, or OUT/error.json."""
    import tempfile

    from cambrian.operator.platform.termination import compact

    with tempfile.TemporaryDirectory() as out:
        (Path(out) / ("error.json" if code else "metrics.json")).write_text(json.dumps(dict(result)))
        return compact(Path(out), code)


def train_main(argv: list[str]) -> int:
    """The local platform's training command: `cambrian train`'s contract (--config/--delta/--data/--out, OUT/
    metrics.json and OUT/bundle, or exit 4 with OUT/error.json). Which hypothesis it trains is in the local
    platform's request file, ROOT/jobs/<job>/job.json, two folders above OUT (ROOT/jobs/<job>/work/out): the
    local counterpart of the Job's owner label that KwokTrainer reads in the cluster."""
    p = argparse.ArgumentParser()
    for flag in ("--config", "--delta", "--data", "--out", "--copy-bundle"):
        p.add_argument(flag)
    a, _ = p.parse_known_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    request = json.loads((out.parent.parent / "job.json").read_text())
    code, result = training_outcome(request.get("hypothesis"), json.loads(Path(a.config).read_text()))
    if code:
        (out / "error.json").write_text(json.dumps(result))
        return code
    if a.copy_bundle:
        shutil.copytree(a.copy_bundle, out / "bundle", dirs_exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result))
    return 0


class KwokTrainer:
    """Finishes the cluster's training pods with `training_outcome`: each Running pod of a training Job (held by
    kwok.cambrian.dev/duration) gets the exit code and termination message kwok then reports (testing/kwok-stages.yaml).
    The hypothesis is the pod's owner label, the config its Job's ConfigMap (what the trainer container mounts)."""

    def __init__(self, cluster: Any, namespace: str, poll_s: float = 0.5):
        self.c, self.ns, self.poll_s = cluster, namespace, poll_s
        self.finished: dict[str, int] = {}  # pod -> exit code
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kwok-trainer")

    def __enter__(self) -> "KwokTrainer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        from cambrian.testing.cluster import ANNOTATION_DURATION, ANNOTATION_EXIT_CODE, ANNOTATION_TERMINATION_MESSAGE

        while not self._stop.wait(self.poll_s):
            try:
                pods = self.c.get_json("pods", "-n", self.ns, "-l", "app.kubernetes.io/component=training")["items"]
                for pod in pods:
                    meta = pod["metadata"]
                    if (pod.get("status") or {}).get("phase") != "Running" or meta["name"] in self.finished \
                            or ANNOTATION_EXIT_CODE in (meta.get("annotations") or {}):
                        continue
                    job = meta["labels"]["job-name"]
                    found = self.c.kubectl("get", "configmap", job, "-n", self.ns, "-o", "json", check=False)
                    if found.returncode != 0 and "NotFound" in found.stderr:
                        continue  # created beside its Job, not before: the next poll finds it
                    cm = json.loads(found.stdout) if found.returncode == 0 else self.c.get_json("configmap", job, "-n", self.ns)
                    owner = meta["labels"].get("cambrian.dev/owner")
                    code, result = training_outcome(None if owner == EVOLUTION else owner,
                                                    json.loads(cm["data"]["config.json"]))
                    self.c.kubectl("annotate", "--overwrite", "pod", meta["name"], "-n", self.ns,
                                   f"{ANNOTATION_EXIT_CODE}={code}",
                                   f"{ANNOTATION_TERMINATION_MESSAGE}={termination_message(code, result)}",
                                   f"{ANNOTATION_DURATION}=0s")
                    self.finished[meta["name"]] = code
            except Exception as exc:  # noqa: BLE001 - reported by the test; the next poll tries again
                self.errors.append(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------- online


def readout(rollout: str) -> Any:
    """Per-arm sums of the rollout's experiment as Prometheus would return them: USERS_PER_ARM seeded users per arm
    (50/50), each with a pre-period value (the CUPED covariate) and an in-experiment value of watch_minutes and
    sessions; the treatment's values are lifted as the PLAN of its proposal says."""
    import numpy as np

    from cambrian.online.prometheus import ExperimentReadout
    from cambrian.stats.sums import SufficientStats

    i = proposal_index(rollout)
    plan = PLAN.get(i, Plan()) if i is not None else Plan()
    rng = np.random.default_rng(1000 + (i or 0))
    stats: dict[str, dict[str, SufficientStats]] = {}
    for arm in ("control", "treatment"):
        lifted = arm == "treatment"
        arm_stats = {}
        for metric, lift, shape, scale in (("watch_minutes", plan.watch_lift, 4.0, 2.5),
                                           ("sessions", plan.sessions_lift, 6.0, 0.5)):
            habit = rng.gamma(shape, scale, USERS_PER_ARM)
            pre = habit * rng.lognormal(0, 0.2, USERS_PER_ARM)
            now = habit * rng.lognormal(0, 0.2, USERS_PER_ARM) * (1.0 + (lift if lifted else 0.0))
            arm_stats[metric] = SufficientStats.from_arrays(now, pre)
        stats[arm] = arm_stats
    return ExperimentReadout(rollout, time.time(), 0, stats, {"control": USERS_PER_ARM, "treatment": USERS_PER_ARM}, {})


# --------------------------------------------------------------------------------------------- comparing

_SUFFIX = re.compile(r"-[0-9a-f]{8}\b")


def normalized(name: str | None) -> str | None:
    """A child's name without the digests of its owners' uids (which differ between the two runs)."""
    return _SUFFIX.sub("", name) if name else name


def record(kind: str, obj: Mapping[str, Any]) -> tuple | None:
    """The transition an object's persisted status shows, normalized; None before its first reconcile."""
    st = obj.get("status") or {}
    if not st.get("phase"):
        return None
    if kind == "Evolution":
        champ = st.get("champion") or {}
        return (st["phase"], normalized(champ.get("hypothesis")) or champ.get("name"))
    if kind == "Hypothesis":
        return (st["phase"], st.get("verdict"), st.get("failureStage"))
    return (st["phase"], st.get("decision"), st.get("winner"))


# Final status fields compared between the platforms (times, GPU hours and review counts are the clock's, not
# the loop's: wall time in the cluster, simulated time locally).
SUMMARY = {
    # (not lastDecision: of two Rollouts concluding in the same review period, which one the cluster sees last
    # depends on when each readout ran, the local driver concludes both at one instant; nor handledDecisions, which
    # holds a decision only until its Rollout is marked applied: the champion and the Hypotheses' phases say
    # what was decided)
    "Evolution": ("phase", "reason", "champion", "baselineMetrics", "counters", "spend", "liveRollouts"),
    "Hypothesis": ("phase", "reason", "verdict", "gain", "noiseFloor", "offlineMetric", "offlineScore", "proxyMetrics",
                   "attempts", "confirmations", "confirmationRetries", "seedRuns", "failureStage", "bundleUri",
                   "online", "rollout"),
    "Rollout": ("phase", "reason", "decision", "winner", "recommendation", "readouts", "step", "effects", "srm",
                "weightsSummary", "arms"),
}
CLOCK_FIELDS = {"time", "since", "gpuHours", "reviews", "lastTransitionTime"}


def _clean(v: Any) -> Any:
    if isinstance(v, str):
        return normalized(v)
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):  # null fields left out: the API server prunes them, the local store keeps them
        return {k: _clean(x) for k, x in v.items() if k not in CLOCK_FIELDS and x is not None}
    return v


def summary(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The loop's part of an object's final status, normalized: what both platforms must agree on."""
    st = obj.get("status") or {}
    out = {k: _clean(st.get(k)) for k in SUMMARY[kind]}
    out["conditions"] = {c["type"]: [c.get("status"), c.get("reason")] for c in st.get("conditions") or []}
    return out


def retirement_decided_elsewhere(kind: str, event: str, message: str, objects: Iterable[tuple[str, Mapping]]) -> bool:
    """An Evolution's RolloutRetired entry for a Rollout that ended by its own readout (no status.retired): whether
    the launch's reconcile saw that Rollout before or after its readout is the clock's (in the cluster a loaded
    machine delays the readout; the local driver reads both out at one simulated instant). What the Rollout
    decided, and so what became of its Hypothesis, is compared either way."""
    if kind != "Evolution" or event != "RolloutRetired":
        return False
    own = {o["metadata"]["name"] for k, o in objects
           if k == "Rollout" and not (o.get("status") or {}).get("retired")}
    return any(message.startswith(f"rollout {name} ended") for name in own)


def journal_entry(kind: str, name: str, event: str, message: str) -> tuple[str, str, str]:
    return f"{kind}/{normalized(name)}", event, normalized(message) or ""


class Transitions:
    """Each object's sequence of distinct normalized transitions, as its status was persisted."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[tuple]] = {}
        self.at: dict[tuple[str, str, tuple], float] = {}  # when each transition was first seen (monotonic s)
        self._lock = threading.Lock()

    def add(self, kind: str, name: str, obj: Mapping[str, Any]) -> None:
        t = record(kind, obj)
        if t is None:
            return
        with self._lock:
            seq = self.seen.setdefault((kind, normalized(name) or name), [])
            if not seq or seq[-1] != t:
                seq.append(t)
                self.at.setdefault((kind, normalized(name) or name, t), time.monotonic())

    def first(self, kind: str, phases: tuple[str, ...], last: bool = False) -> float | None:
        """When the first (or last) object of `kind` first reached one of `phases`."""
        with self._lock:
            times = [t for (k, _, tr), t in self.at.items() if k == kind and tr[0] in phases]
        return (max if last else min)(times) if times else None

    def table(self) -> dict[str, list[tuple]]:
        with self._lock:
            return {f"{k}/{n}": list(v) for (k, n), v in sorted(self.seen.items())}


class ClusterWatch:
    """Streams every update of the namespace's Evolutions, Hypotheses and Rollouts into `transitions` (one watch
    per kind; a watch that ends is reopened from the last resourceVersion, so no persisted status is missed)."""

    PLURALS = {"Evolution": "evolutions", "Hypothesis": "hypotheses", "Rollout": "rollouts"}

    def __init__(self, kubeconfig: str | Path, namespace: str, transitions: Transitions):
        from kubernetes import client, config

        self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))
        self.ns, self.transitions = namespace, transitions
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(k, p), daemon=True)
                         for k, p in self.PLURALS.items()]

    def __enter__(self) -> "ClusterWatch":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def _watch(self, kind: str, plural: str) -> None:
        from kubernetes import watch

        version = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.api.list_namespaced_custom_object, "cambrian.dev", "v1alpha1", self.ns, plural,
                                   resource_version=version, timeout_seconds=5, allow_watch_bookmarks=False):
                    obj = ev["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self.transitions.add(kind, obj["metadata"]["name"], obj)
                    if self._stop.is_set():
                        break
            except Exception as exc:  # noqa: BLE001 - 410 Gone and friends: list again from scratch
                self.errors.append(f"{plural}: {type(exc).__name__}: {exc}")
                version = None
            finally:
                w.stop()


def local_train_command(real_bundle: Path) -> list[str]:
    return [sys.executable, "-m", "cambrian.testing.parity", "train", "--copy-bundle", str(real_bundle)]


def train_real_bundle(root: Path) -> tuple[Path, Path]:
    """A tiny world and a real model trained on it once (`cambrian world generate`, `cambrian train`): the bundle
    the local stand-in trainer copies, so the local arms and champion are real model servers. (world, bundle)"""
    cli = [sys.executable, "-m", "cambrian.cli"]
    w = evolution()["spec"]["data"]["world"]
    subprocess.run([*cli, "world", "generate", "--users", str(w["users"]), "--days", str(w["days"]), "--seed",
                    str(w["seed"]), "--out", str(root / "world")], check=True, capture_output=True, timeout=300)
    (root / "config.json").write_text(json.dumps(evolution()["spec"]["baseline"]))
    r = subprocess.run([*cli, "train", "--config", str(root / "config.json"), "--data", str(root / "world"), "--out",
                        str(root / "trained")], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"cambrian train failed: {r.stderr[-2000:]}")
    return root / "world", root / "trained" / "bundle"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
    print("usage: python -m cambrian.testing.parity train --config C --data D --out O [--delta X] [--copy-bundle B]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
