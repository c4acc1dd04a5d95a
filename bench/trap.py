"""`cambrian bench run trap`: does the real loop keep the clickbait trap out while launching a better change?

Per seed (issue 18's target: the trap never launched in 5 of 5 seeds, at least one genuinely better change
launched):
* a calibrated world (`--preset calibrated`) of the seed's users and logged days;
* the demo's Evolution (cambrian/demo.py: built-in proposer, noise floor, A/B Rollouts of the top K with a
  ramp, group-sequential CUPED decisions, auto launch) reconciled by the operator's core on the LocalDriver,
  with real sandboxed training, model servers, router, simulated users and Prometheus;
* plus the trap, filed as a human Hypothesis before the first wake-up: a reward that weighs clicks on
  eye-catching thumbnails up (bench/fidelity.py's `reward:clickbait`: CTR and early minutes up,
  satisfaction and later return down);
* afterwards, the truth from the simulator: every hypothesis that went online, and the trap whatever
  happened to it, is served to all users of a fresh copy of the world for `truth_days` days with common
  random numbers against the baseline's bundle (bench/fidelity's paired per-user effect). "Genuinely
  better" = minutes per user up by more than two paired standard errors and active days in the last third
  not down by more than two.

Reported per seed: where the trap stopped (offline gate, not selected for a Rollout, the Rollout's decision,
or launched), what each launched change truly did, the offline-only counterfactual (would launching the
best offline score have launched the trap), and every Rollout's verdict judged against the truth of what it
compared: its treatment against its own control, which after a launch is the champion of the day, not Φ0.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cambrian.bench.fidelity import DEFAULT_WORLD, TRAP, bench_world, online_effects
from cambrian.demo import FULL as DEMO_FULL
from cambrian.operator.reconcile.hypothesis import SUPERSEDED, UNDECIDED

SEEDS = (0, 1, 2, 3, 4)
TRAP_NAME = "human-clickbait-trap"


@dataclass(frozen=True)
class Size:
    users: int
    days: int
    evaluations: int
    online_days: int
    epochs: int
    max_train_examples: int
    truth_days: int

    def lasting(self, online_days: int) -> "Size":
        """This size with Rollouts of `online_days` (their maxDuration) and a truth at least that long, so that
        "genuinely better" speaks of the horizon the tests decided on."""
        return replace(self, online_days=online_days, truth_days=max(self.truth_days, online_days))


# evaluations: the baseline's 3 seeds, one wake-up's 9 proposals, the trap, and confirmation seeds; at full size the
# Rollouts run as long as the demo's (maxDuration) and the truth covers at least that horizon
QUICK = Size(users=600, days=4, evaluations=18, online_days=6, epochs=1, max_train_examples=50_000, truth_days=6)
FULL = Size(users=2000, days=8, evaluations=24, online_days=14, epochs=2, max_train_examples=200_000,
            truth_days=14).lasting(DEMO_FULL.online_days)


def evolution_and_trap(size: Size, seed: int, world: str = DEFAULT_WORLD) -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo's Evolution at this size (built-in proposer) on the benchmark world's preset, with that world's Φ0
    as its baseline and its offline objective (bench/fidelity.WORLDS), and the trap Hypothesis (a patch on that
    Φ0)."""
    from cambrian.demo import EVOLUTION, FULL as DEMO, evolution_object

    setup = bench_world(world)
    demo = replace(DEMO, users=size.users, days=size.days, evaluations=size.evaluations, online_days=size.online_days,
                   epochs=size.epochs, max_train_examples=size.max_train_examples, world=setup.preset)
    evo = evolution_object(demo, seed, gemini=False)
    evo["spec"]["baseline"] = {**setup.base, **evo["spec"]["baseline"]}
    if setup.offline:  # the world's own offline objective for the components it names (the wary world's: likes)
        evo["spec"]["objective"]["offline"] = dict(setup.offline)
    _, delta = setup.candidates[TRAP]
    trap = {"apiVersion": evo["apiVersion"], "kind": "Hypothesis", "metadata": {"name": TRAP_NAME},
            "spec": {"evolutionRef": {"name": EVOLUTION}, "component": "reward",
                     "explanation": "Items with eye-catching thumbnails get clicked more: weigh those clicks up so the "
                                    "model learns what users click.",
                     "predictedEffect": {"metric": "watch_minutes", "direction": "increase", "relativeChange": 0.02},
                     "delta": {"patch": delta["reward"]}, "origin": {"kind": "human", "author": "bench-trap"}}}
    return evo, trap


class Truth:
    """Each bundle served once to all users of a fresh copy of the world for `days` days (common random
    numbers), and effects between any two of them."""

    def __init__(self, data: Path, days: int):
        self.data, self.days, self.arms = data, days, {}

    def arm(self, bundle: str) -> dict[str, np.ndarray]:
        from cambrian.bench.fidelity import serve_online
        from cambrian.trainer.bundle import load_bundle

        if bundle not in self.arms:
            with load_bundle(bundle) as model:
                self.arms[bundle] = serve_online(self.data, model.score, self.days)
        return self.arms[bundle]

    def effect(self, bundle: str, reference: str) -> dict[str, float]:
        return {k: round(v, 6) for k, v in online_effects(self.arm(bundle), self.arm(reference)).items()}


def served_bundles(rollouts: list[dict[str, Any]], done: list[Any], evolution: dict[str, Any],
                   local: Callable[[str], str]) -> tuple[str, dict[str, str]]:
    """The bundles the loop itself served, so the truth compares what the Rollouts compared: the reference is
    the first Rollout's control (the champion before any launch; without a Rollout, the Evolution's champion),
    and a hypothesis is its Rollout's treatment bundle, or, never online, its first successful run's (the run
    that was scored; confirmation seeds come after it)."""
    ordered = sorted(rollouts, key=lambda r: (r["metadata"].get("creationTimestamp") or "", r["metadata"]["name"]))
    bundles: dict[str, str] = {}
    for r in ordered:
        for arm in (r.get("spec") or {}).get("treatments") or []:
            bundles.setdefault(arm["hypothesisRef"]["name"], local(arm["bundle"]))
    for run in sorted((r for r in done if r.ok and r.bundle and r.hypothesis != "baseline"),
                      key=lambda r: r.finished_at or datetime.max.replace(tzinfo=timezone.utc)):
        bundles.setdefault(run.hypothesis, run.bundle)
    if ordered:
        reference = local(ordered[0]["spec"]["control"]["bundle"])
    else:
        champion = ((evolution.get("status") or {}).get("champion") or {}).get("bundle")
        if not champion:
            raise RuntimeError("the Evolution has no champion bundle to measure against")
        reference = local(champion)
    return reference, bundles


def genuinely_better(t: dict[str, float]) -> bool:
    return (t["minutes"] - 2 * t["minutes_se"] > 0
            and t["active_days_late"] + 2 * t["active_days_late_se"] >= 0)


def verdict_check(rollout: dict[str, Any], truth_vs_control: dict[str, float]) -> bool | None:
    """Was the Rollout's statistical verdict right about what it compared (its treatment against its own control,
    which is the champion of the day, not necessarily Φ0)? A promotion is right when the treatment is genuinely
    better than that control; a guardrail stop when the guarded metric truly moved past its margin the wrong way.
    None for what is not a statistical verdict (inconclusive, retired or approved by hand, still running)."""
    st = rollout.get("status") or {}
    decision = st.get("decision")
    if decision == "promote":
        return genuinely_better(truth_vs_control)
    if decision != "rollback":
        return None
    breached = {r["metric"] for r in st.get("guardrails") or [] if r.get("breached")}
    for g in ((rollout.get("spec") or {}).get("metrics") or {}).get("guardrails") or []:
        if g["metric"] in breached and g["metric"] in truth_vs_control:
            moved = truth_vs_control[g["metric"]]
            harm = moved if g.get("direction", "maximize") == "minimize" else -moved
            return harm > float(g.get("margin", 0.0))
    return None


def days_between(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() / 86400, 3)


def trap_stop(h: dict[str, Any]) -> str:
    """Which gate the trap stopped at, from its stored status."""
    st = h.get("status") or {}
    phase, verdict = st.get("phase"), st.get("verdict")
    if phase == "Launched":
        return "launched"
    if (st.get("online") or {}).get("decision"):
        return f"online: {st['online']['decision']} ({(st['online'].get('reason') or '')[:160]})"
    if phase in ("Failed", "Rejected"):
        return f"{phase.lower()}: {(st.get('reason') or '')[:160]}"
    if verdict == "promising":  # cleared the one-seed floor; its confirmation seeds were never trained
        return (f"offline: promising, not confirmed (gain {st.get('gain')}, noise floor {st.get('noiseFloor')}; "
                "the evaluation budget was spent before its confirmation seeds)")
    if verdict != "better":
        return f"offline gate: verdict {verdict} (gain {st.get('gain')}, noise floor {st.get('noiseFloor')})"
    live = {c.get("reason") for c in st.get("conditions") or [] if c.get("type") == "Live"}
    if UNDECIDED in live:
        return f"online: undecided in {len(st.get('undecidedTests') or [])} tests, retired ({(st.get('reason') or '')[:160]})"
    if SUPERSEDED in live:
        return f"online: undecided, not tested again before the run ended ({(st.get('reason') or '')[:160]})"
    return "offline better, not selected for a Rollout"


def one_seed(root: Path, size: Size, seed: int, say: Callable[[str], None], world: str = DEFAULT_WORLD) -> dict[str, Any]:
    from cambrian.demo import rollouts_settled
    from cambrian.operator.local_driver import LocalDriver
    from cambrian.world.generate import generate

    from cambrian.bench.throughput import load_now

    t0, load_start = time.perf_counter(), load_now()
    data = root / "world"
    generate(data, n_users=size.users, days=size.days, seed=seed, preset=bench_world(world).preset, force=True)
    evo, trap = evolution_and_trap(size, seed, world)
    driver = LocalDriver(root / "evolve", data_dir=data, workers=2, max_days=size.online_days * 4 + 10,
                         until=rollouts_settled)
    driver.apply([evo, trap])
    summary = driver.run()
    say(f"seed {seed}: loop {summary.reason} after {summary.days:g} simulated days, {time.perf_counter() - t0:.0f} s")
    return {**measure(driver, data, size, seed, say), "stop_reason": summary.reason,
            "simulated_days": round(summary.days, 3), "seconds": round(time.perf_counter() - t0, 1),
            "load_average_start": load_start, "load_average_end": load_now()}


def measure(driver: Any, data: Path, size: Size, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """What the loop on `driver` did, and the simulator's truth about it."""
    from cambrian.bench.evolution import runs
    from cambrian.demo import EVOLUTION
    from cambrian.operator.platform.local import local_path
    from cambrian.operator.reconcile.views import A_PREDICTED

    stored = driver.store.get("evolutions", "default", EVOLUTION) or {}
    hyps = {h["metadata"]["name"]: h for h in driver.store.list("hypotheses")}
    rollouts = driver.store.list("rollouts")
    done = runs(driver, stored)
    base_bundle, bundles = served_bundles(rollouts, done, stored, lambda uri: str(local_path(uri, driver.root)))

    # the Online Agent's prediction rides on the Rollout it started (the surrogate's once 4 rollouts concluded)
    predicted = {r["metadata"]["name"]: (r["metadata"].get("annotations") or {}).get(A_PREDICTED) for r in rollouts}

    def row(name: str) -> dict[str, Any]:
        st = hyps[name].get("status") or {}
        spec = hyps[name]["spec"]
        return {"name": name, "component": spec["component"], "delta": spec["delta"],
                "origin": spec.get("origin"), "phase": st.get("phase"), "verdict": st.get("verdict"),
                "offline_metric": st.get("offlineMetric"), "gain": st.get("gain"), "noise_floor": st.get("noiseFloor"),
                "rollout": st.get("rollout"), "online": st.get("online"),
                "predicted": predicted.get(st.get("rollout"))}

    online = sorted(n for n, h in hyps.items() if (h.get("status") or {}).get("rollout"))
    launched = sorted(n for n, h in hyps.items() if (h.get("status") or {}).get("phase") == "Launched")
    to_measure = sorted({*online, TRAP_NAME} & set(bundles))
    served = Truth(data, size.truth_days)
    truths = {n: served.effect(bundles[n], base_bundle) for n in to_measure}
    judged = {}
    for r in rollouts:  # each Rollout's verdict against the truth of what it compared
        control = str(local_path(r["spec"]["control"]["bundle"], driver.root))
        arms = r["spec"]["treatments"]
        vs = served.effect(str(local_path(arms[0]["bundle"], driver.root)), control) if len(arms) == 1 else None
        judged[r["metadata"]["name"]] = {"truth_vs_control": vs, "verdict_right": None if vs is None else verdict_check(r, vs)}
    for n, t in truths.items():
        say(f"  {n}: minutes {t['minutes']:+.4f} ± {t['minutes_se']:.4f}, active days late "
            f"{t['active_days_late']:+.4f} ± {t['active_days_late_se']:.4f}")
    scored = [h for h in hyps.values() if (h.get("status") or {}).get("phase") not in (None, "Failed", "Rejected")
              and (h.get("status") or {}).get("gain") is not None and (h.get("status") or {}).get("noiseFloor")]
    best_offline = max(scored, key=lambda h: h["status"]["gain"] / h["status"]["noiseFloor"], default=None)
    return {
        "seed": seed,
        "trap_launched": TRAP_NAME in launched,
        "trap_stopped_at": trap_stop(hyps[TRAP_NAME]),
        "trap": {**row(TRAP_NAME), "truth": truths.get(TRAP_NAME)},
        "launched": [{**row(n), "truth": truths.get(n), "genuinely_better": n in truths and genuinely_better(truths[n])}
                     for n in launched],
        "genuinely_better_launched": [n for n in launched if n in truths and genuinely_better(truths[n])],
        "tested_online": [{**row(n), "truth": truths.get(n)} for n in online],
        "rollouts": [{"name": r["metadata"]["name"],
                      "control": r["spec"]["control"].get("hypothesisRef", {}).get("name", "baseline"),
                      "treatments": [t["hypothesisRef"]["name"] for t in r["spec"]["treatments"]],
                      "decision": (r.get("status") or {}).get("decision"),
                      "reason": (r.get("status") or {}).get("reason"),
                      "users": {a.get("name"): a.get("n") for a in (r.get("status") or {}).get("arms") or []},
                      "days": days_between((r.get("status") or {}).get("startedAt"), (r.get("status") or {}).get("concludedAt")),
                      "readouts": (r.get("status") or {}).get("readouts"),
                      "effects": (r.get("status") or {}).get("effects"),
                      "phase": (r.get("status") or {}).get("phase"),
                      **judged[r["metadata"]["name"]]} for r in rollouts],
        "offline_best": None if best_offline is None else {
            "name": best_offline["metadata"]["name"],
            "floors": round(best_offline["status"]["gain"] / best_offline["status"]["noiseFloor"], 3),
            "is_trap": best_offline["metadata"]["name"] == TRAP_NAME},
        "hypotheses": {n: {"phase": (h.get("status") or {}).get("phase"), "verdict": (h.get("status") or {}).get("verdict"),
                           "floors": (round(h["status"]["gain"] / h["status"]["noiseFloor"], 3)
                                      if h in scored else None)} for n, h in sorted(hyps.items())},
        "champion": ((stored.get("status") or {}).get("champion") or {}).get("name") or "baseline",
    }


def size_for(quick: bool, users: int | None = None, online_days: int | None = None) -> Size:
    """QUICK or FULL, with another number of users if asked (the online tests' power scales with it; the
    demo's Evolution sizes its Rollouts' minimum sample from the users), or another test length (Size.lasting)."""
    size = QUICK if quick else FULL
    if users is not None:
        size = replace(size, users=users)
    if online_days is not None:
        size = size.lasting(online_days)
    return size


def run(quick: bool = False, progress: Callable[[str], None] | None = None, size: Size | None = None,
        seeds: tuple[int, ...] = SEEDS, users: int | None = None, online_days: int | None = None,
        world: str = DEFAULT_WORLD) -> dict:
    from cambrian.bench.throughput import load_now

    bench_world(world)
    say = progress or (lambda msg: None)
    size = size or size_for(quick, users, online_days)
    t0, load_start = time.perf_counter(), load_now()
    per_seed = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix=f"cambrian-bench-trap-{seed}-") as tmp:
            per_seed.append(one_seed(Path(tmp), size, seed, say, world))
        say(json.dumps({k: per_seed[-1][k] for k in ("seed", "trap_launched", "trap_stopped_at",
                                                      "genuinely_better_launched")}))
    return {**summarise(per_seed, size, quick, world), "load_average_start": load_start, "load_average_end": load_now(),
            "seconds": round(time.perf_counter() - t0, 1)}


def summarise(per_seed: list[dict[str, Any]], size: Size, quick: bool, world: str = DEFAULT_WORLD) -> dict[str, Any]:
    ok = [not s["trap_launched"] and bool(s["genuinely_better_launched"]) for s in per_seed]
    return {
        "name": "trap",
        "command": "cambrian bench run trap" + (" --quick" if quick else "")
                   + (f" --users {size.users}" if size.users != size_for(quick).users else "")
                   + (f" --online-days {size.online_days}" if size.online_days != size_for(quick).online_days else "")
                   + (f" --world {world}" if world != DEFAULT_WORLD else ""),
        "quick": quick,
        "ratio": sum(ok) / len(ok),
        "ratio_meaning": (f"share of seeds where the real loop (demo's Evolution, {world} world) did not launch the "
                          "clickbait trap and launched at least one genuinely better change (truth from the simulator, "
                          "common random numbers); target 1.0 over 5 seeds"),
        "trap_launched": sum(s["trap_launched"] for s in per_seed),
        "seeds_with_a_better_launch": sum(bool(s["genuinely_better_launched"]) for s in per_seed),
        "offline_best_is_trap": sum(bool(s["offline_best"] and s["offline_best"]["is_trap"]) for s in per_seed),
        "online_verdicts": online_verdicts(per_seed),
        "launch_effects": launch_effects(per_seed),
        "size": size.__dict__,
        "world": world,
        "seeds": per_seed,
    }


def launch_effects(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """What each promotion truly moved (minutes per user, its treatment against its own control, over the truth's
    horizon): issue 18 asks the launched changes' median absolute effect to be of the paper's order (under 2%)."""
    moved = sorted(r["truth_vs_control"]["minutes"] for s in per_seed for r in s.get("rollouts", ())
                   if r.get("decision") == "promote" and r.get("truth_vs_control"))
    return {"promotions": len(moved), "minutes": [round(m, 6) for m in moved],
            "median_abs_minutes": round(float(np.median(np.abs(moved))), 6) if moved else None}


def online_verdicts(per_seed: list[dict[str, Any]]) -> dict[str, int]:
    """How many of the Rollouts' promotions and guardrail stops were right about what they compared."""
    out = {"promotions": 0, "promotions_right": 0, "stops": 0, "stops_right": 0}
    for r in (r for s in per_seed for r in s.get("rollouts", ())):
        if r.get("verdict_right") is None:
            continue
        kind = "promotions" if r["decision"] == "promote" else "stops"
        out[kind] += 1
        out[f"{kind}_right"] += bool(r["verdict_right"])
    return out
