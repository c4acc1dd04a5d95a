"""Benchmark `multifidelity`: what spec.fidelity (a cheap first look at every candidate, full training only for the
promoted ones) saves, and what it loses, against the same loop without it, in one run.

Per seed, two arms on the same generated world, from the same Φ0, with the built-in proposer and ONE wake-up
(3 personas × 3 proposals): the proposer sees the same empty journal in both arms, so both get the same candidates
(checked: their deltas are matched one to one) and the comparison is paired per candidate:
* full     — the loop as it is by default: every candidate trained in full, promising ones confirmed;
* fidelity — the same Evolution with spec.fidelity (FIDELITY below): first looks, then full training and
             confirmation for the promoted ones only.
Both arms run on the LocalDriver with the real trainer (bench/evolution.py), 2 training slots.

Figures (summed over seeds):
* full-training seconds of candidates: wall seconds of their full runs (first seed, confirmation seeds); the
  baseline's own seeds are the same in both arms and are left out. Headline ratio = fidelity / full (target
  <= 0.6, i.e. at least 40% fewer);
* the price: first-look seconds (candidates' and the champion's first-look seeds), and all training seconds;
* full trainings saved: candidates stopped at their first look;
* winners discarded: candidates judged `better` in the full arm that the fidelity arm stopped; and whether the
  full arm's final best (best common metric over its candidates' full first runs) was stopped;
* final best in each arm (the common metric, `long_watch_corr`, as in `search`), and the best `better` one;
* other promotion rules replayed on the measured first looks: floor thresholds (`rules`) and rank rules of the
  successive-halving shape (`rank_rules`: the top 1/eta of the wake-up or of each persona's share).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from cambrian.bench.throughput import load_now, make_world

METRIC = "long_watch_corr"
FIDELITY = {"firstLook": {"epochFraction": 0.25, "sampleFraction": 1.0}, "promote": {"minGainFloors": 1.0}}


def _key(delta: Any) -> str:
    return json.dumps(delta, sort_keys=True)


def candidates(out, hypotheses: list[dict]) -> dict[str, dict[str, Any]]:
    """Per candidate (by its delta): full-run seconds, first-look seconds, its full first run's common metric,
    verdict and first-look decision."""
    by_name = {h["metadata"]["name"]: h for h in hypotheses}
    per: dict[str, dict[str, Any]] = {}
    for name, h in by_name.items():
        st = h.get("status") or {}
        per[_key(h["spec"].get("delta"))] = {
            "hypothesis": name, "component": h["spec"].get("component"),
            "persona": (h["spec"].get("origin") or {}).get("persona"), "verdict": st.get("verdict"),
            "phase": st.get("phase"), "decision": (st.get("firstLook") or {}).get("decision"),
            "look_gain": (st.get("firstLook") or {}).get("gain"), "look_floor": (st.get("firstLook") or {}).get("noiseFloor"),
            "full_seconds": 0.0, "look_seconds": 0.0, "full_runs": 0, "value": None}
    for r in out.runs:
        if r.hypothesis == "baseline":
            continue
        c = per[_key(r.delta)]
        if r.first_look:
            c["look_seconds"] += r.seconds
            continue
        c["full_seconds"] += r.seconds
        c["full_runs"] += 1
        first = (by_name[r.hypothesis].get("status") or {}).get("seedRuns") or []
        if first and first[0]["job"] == r.job:
            c["value"] = r.metrics.get(METRIC)
    return per


def _best(per: dict[str, dict], better_only: bool = False) -> tuple[str | None, float | None]:
    ok = [(c["value"], k) for k, c in per.items() if c["value"] is not None and math.isfinite(c["value"])
          and (not better_only or c["verdict"] == "better")]
    if not ok:
        return None, None
    value, key = max(ok)
    return key, value


RULES = (-1.0, -0.5, 0.0, 0.5, 1.0)  # promote.minGainFloors values replayed on the measured first looks
# Rank rules (successive halving's shape): (eta, per persona, always promote at or above this many floors). Within
# the wake-up (or each persona's share of it) only the top ceil(n / eta) by first-look gain in floors go on.
RANK_RULES = {"top 1/2": (2, False, None), "top 1/3": (3, False, None), "top 1/2 or >= 0 floors": (2, False, 0.0),
              "top 1/2 per persona": (2, True, None), "top 1/3 per persona": (3, True, None)}


def rank_stopped(looks: dict[str, dict], eta: int, per_persona: bool, always: float | None) -> set[str]:
    """Candidates a rank rule stops: outside the top ceil(n / eta) of their cohort (the wake-up, or its persona's
    share) by first-look gain / floor, and below `always` floors when given."""
    cohorts: dict[Any, list[str]] = {}
    for k, c in looks.items():
        cohorts.setdefault(c.get("persona") if per_persona else None, []).append(k)
    z = {k: c["look_gain"] / c["look_floor"] for k, c in looks.items()}
    kept = {k for ks in cohorts.values() for k in sorted(ks, key=lambda k: -z[k])[:math.ceil(len(ks) / eta)]}
    return {k for k in looks if k not in kept and (always is None or z[k] < always)}


def compare(full: dict[str, dict], fid: dict[str, dict]) -> dict[str, Any]:
    """Paired figures of one seed (pure: tested without training).

    A promoted candidate's full runs are the same runs in both arms (same Φ, seed and data: the same metrics and
    verdict), so what the fidelity arm's full trainings cost is measured in the full arm, under the same load:
    paired seconds = the full arm's full-run seconds of the candidates the fidelity arm did not stop. The seconds the
    fidelity arm's own full runs took are kept (`measured_full_seconds`), but the two arms ran one after the other on
    a shared machine, so their ratio mixes in the load. `rules`: other promote.minGainFloors replayed on the same
    measured first looks (gain, floor), which the loop would have decided the same way; `rank_rules`: successive
    halving's rank rules (RANK_RULES) replayed on them, which the core does not implement."""
    if set(full) != set(fid):
        raise RuntimeError(f"the arms trained different candidates ({len(set(full) ^ set(fid))} differ): "
                           "the comparison would not be paired")
    winner, best = _best(full)
    fwin, fbest = _best(fid)
    better = [k for k, c in full.items() if c["verdict"] == "better"]
    total = sum(c["full_seconds"] for c in full.values())

    def replay(stopped: set[str]) -> dict[str, Any]:
        kept = sum(c["full_seconds"] for k, c in full.items() if k not in stopped)
        return {"stopped": len(stopped), "full_seconds_ratio": kept / total if total else None,
                "full_runs": sum(c["full_runs"] for k, c in full.items() if k not in stopped),
                "better_discarded": sum(k in stopped for k in better), "winner_discarded": winner in stopped}

    looks = {k: c for k, c in fid.items() if c["look_gain"] is not None and c["look_floor"]}
    return {
        "candidates": len(full),
        "full_seconds": {"full": total, "fidelity": sum(c["full_seconds"] for k, c in full.items()
                                                        if fid[k]["decision"] != "stopped")},
        "measured_full_seconds": {"full": total, "fidelity": sum(c["full_seconds"] for c in fid.values())},
        "full_runs": {"full": sum(c["full_runs"] for c in full.values()),
                      "fidelity": sum(c["full_runs"] for c in fid.values())},
        "candidate_look_seconds": sum(c["look_seconds"] for c in fid.values()),
        "stopped": sum(c["decision"] == "stopped" for c in fid.values()),
        "better_in_full": len(better),
        "better_discarded": sum(fid[k]["decision"] == "stopped" for k in better),
        "winner_discarded": winner is not None and fid[winner]["decision"] == "stopped",
        "final_best": {"full": best, "fidelity": fbest},
        "best_better": {"full": _best(full, True)[1], "fidelity": _best(fid, True)[1]},
        "same_winner": winner == fwin,
        "look_gain_in_floors": {fid[k]["hypothesis"]: round(c["look_gain"] / c["look_floor"], 3) for k, c in looks.items()},
        "rules": {str(r): replay({k for k, c in looks.items() if c["look_gain"] < r * c["look_floor"]}) for r in RULES},
        "rank_rules": {name: replay(rank_stopped(looks, *rule)) for name, rule in RANK_RULES.items()},
    }


def summed(per_seed: list[dict], table: str, rule: str) -> dict[str, Any]:
    """One replayed rule over the seeds: its full-seconds ratio weighted by each seed's full-arm seconds."""
    rows = [(p[table][rule], p["full_seconds"]["full"]) for p in per_seed]
    weight = max(sum(w for _, w in rows), 1e-9)
    return {"stopped": sum(r["stopped"] for r, _ in rows),
            "full_seconds_ratio": round(sum(r["full_seconds_ratio"] * w for r, w in rows) / weight, 4),
            "better_discarded": sum(r["better_discarded"] for r, _ in rows),
            "winner_discarded": sum(r["winner_discarded"] for r, _ in rows)}


def run(quick: bool = False, progress: Callable[[str], None] | None = None, seeds: tuple[int, ...] | None = None) -> dict:
    """`seeds`: the Φ0 seeds (default 0-4, or 0-1 with `quick`); other seeds are held out from the choice of
    FIDELITY."""
    from cambrian.bench.evolution import evolution_object, run_on_driver
    from cambrian.bench.search import baseline_config

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    load_start = load_now()
    default_seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    seeds = list(seeds) if seeds else default_seeds
    users, days, epochs = (200, 4, 4) if quick else (300, 5, 4)
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-multifidelity-") as tmp:
        data, summary = make_world(Path(tmp) / "world", users, days, seed=0)
        world = {"users": users, "days": days, "seed": 0}
        for s in seeds:
            base = {"training": baseline_config(epochs, 1000 * s).training.model_dump(mode="json")}
            arms, looks_ref = {}, 0.0
            for arm in ("full", "fidelity"):
                say(f"seed {s}: arm {arm}")
                obj = evolution_object(f"{arm}-s{s}", baseline=base, world=world, evaluations=200, baseline_seeds=2,
                                       confirm_seeds=1, one_wakeup=True,
                                       fidelity=FIDELITY if arm == "fidelity" else None)
                a0 = time.perf_counter()
                out = run_on_driver(Path(tmp) / f"s{s}-{arm}", obj, data, workers=2)
                from cambrian.operator.localstore import LocalStore, NAMESPACE

                hyps = [h for h in LocalStore(Path(tmp) / f"s{s}-{arm}").list("hypotheses", NAMESPACE)]
                arms[arm] = candidates(out, hyps)
                if arm == "fidelity":
                    looks_ref = sum(r.seconds for r in out.runs if r.hypothesis == "baseline" and r.first_look)
                arms[arm + "_all_seconds"] = sum(r.seconds for r in out.runs)
                arms[arm + "_wall"] = round(time.perf_counter() - a0, 1)
            c = compare(arms["full"], arms["fidelity"])
            c |= {"seed": s, "reference_look_seconds": looks_ref,
                  "all_training_seconds": {"full": arms["full_all_seconds"], "fidelity": arms["fidelity_all_seconds"]},
                  "wall_seconds": {"full": arms["full_wall"], "fidelity": arms["fidelity_wall"]},
                  "per_candidate": {"full": list(arms["full"].values()), "fidelity": list(arms["fidelity"].values())}}
            per_seed.append(c)
            say(f"seed {s}: full-training seconds {c['full_seconds']}, stopped {c['stopped']}/{c['candidates']}, "
                f"final best {c['final_best']}")
    tot = lambda key, arm: sum(p[key][arm] for p in per_seed)  # noqa: E731
    ratio = tot("full_seconds", "fidelity") / max(tot("full_seconds", "full"), 1e-9)
    looks = sum(p["candidate_look_seconds"] + p["reference_look_seconds"] for p in per_seed)
    return {
        "name": "multifidelity",
        "command": "cambrian bench run multifidelity" + (" --quick" if quick else "")
                   + (f" --seeds {','.join(map(str, seeds))}" if seeds != default_seeds else ""),
        "quick": quick,
        "ratio": round(ratio, 4),
        "ratio_meaning": ("candidates' full-training seconds with spec.fidelity / without it, the same candidates "
                          "(one wake-up of the built-in proposer), paired (each promoted candidate's full runs timed "
                          "in the full arm), summed over seeds (target <= 0.6)"),
        "measured_full_seconds_ratio": round(tot("measured_full_seconds", "fidelity")
                                             / max(tot("measured_full_seconds", "full"), 1e-9), 4),
        "rules": {str(r): summed(per_seed, "rules", str(r)) for r in RULES},
        "rank_rules": {name: summed(per_seed, "rank_rules", name) for name in RANK_RULES},
        "fidelity": FIDELITY,
        "seeds": seeds,
        "world": {"users": users, "days": days, "impressions": (summary.get("overall") or {}).get("impressions")},
        "phi0_epochs": epochs,
        "full_runs": {"full": tot("full_runs", "full"), "fidelity": tot("full_runs", "fidelity")},
        "candidates": sum(p["candidates"] for p in per_seed),
        "stopped": sum(p["stopped"] for p in per_seed),
        "better_in_full": sum(p["better_in_full"] for p in per_seed),
        "better_discarded": sum(p["better_discarded"] for p in per_seed),
        "winner_discarded": sum(p["winner_discarded"] for p in per_seed),
        "first_look_seconds": round(looks, 1),
        "all_training_seconds_ratio": round(tot("all_training_seconds", "fidelity")
                                            / max(tot("all_training_seconds", "full"), 1e-9), 4),
        "per_seed": per_seed,
        "load_start": load_start,
        "load_end": load_now(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
