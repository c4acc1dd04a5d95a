"""`cambrian bench run decision-world`: the decision benchmark on the calibrated world (or `--world wary`).

`cambrian bench run decision` measures users to a decision on a generator in σ units (ρ = 0.7). This one asks
the same question of the benchmark worlds (issue 18): how many users and days does the demo's decision
policy need to decide on the changes that world actually produces?

* Train Φ0 and three changes of bench/fidelity's set on the world's logs: more epochs (a typical offline
  winner), the largest genuine gain measured there (calibrated: the watch-time reward; wary: the watch + like
  label on its watch-time product) and the clickbait trap; plus an A/A arm (Φ0 against itself). On the wary
  world the trap is deceptive within the test (more minutes in the first days, fewer over three weeks), so its
  arm asks whether the sequential design launches it on an early look.
* Potential outcomes: serve each model to *all* users of a fresh copy of the world for the online days with
  common random numbers. Users never interact in this world and a user's days before their first request are
  the same whatever will serve them, so a randomised experiment is exactly: draw each user's arm (50/50), take
  each user's days from that arm's run. Every simulated experiment is such a draw (no ramp: 50/50 from day 1).
* Each closed day, per-arm sums as the collector publishes them (online/aggregate.py: watch minutes per day
  since first exposure with the pre-period as CUPED covariate, hate rate per impression), then decide() with
  the policy of the Rollout the demo's Evolution starts (cambrian/demo.py FULL at this size: group-sequential
  CUPED, hate-rate guardrail, planned by days: no decision before users/8 per arm, the design ends at
  maxDuration = online days, union boundaries).
* On the same draws: the demo's design before 3 Dec 2026 (`planned_users`: the design ends at users/4 per arm,
  exact boundaries; it decides on the first day), the design by days with exact boundaries
  (`by_days_exact_boundaries`, its rule before 2 Dec) and the design without its guardrails
  (`without_guardrails`: whether the sequential test on the north star alone would launch a change that only its
  first days favour).
* Reported per arm: the true effect (all users in both arms), promote / rollback / no decision rates with their
  Monte Carlo standard errors, the median day and users per arm at the decision, and the users per arm a fixed
  CUPED test needs for 80% power at the true effect (from the world's measured σ and CUPED ρ).
* A/A only, on the same draws: the plain fixed-horizon test at the last day (decide()'s estimator, CUPED relative
  z, against scipy's Welch t-test on the users' CUPED-adjusted values), the check that the design's final look
  reads a z that is N(0, 1); and the design's promotions per block of 400 draws (the spread of a 400-draw figure).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import stats as sps

from cambrian.bench.fidelity import DEFAULT_WORLD, TRAP, bench_world, candidate_config, train_model
from cambrian.bench.fidelity import Size as FidelitySize
from cambrian.demo import FULL as DEMO_FULL
from cambrian.stats.sums import RatioStats, SufficientStats, reference

# per world: the A/A arm, a typical offline winner, the world's largest genuine gain (the ratio's arm), the trap
WORLD_ARMS = {"calibrated": ("aa", "training:more_epochs", "reward:watch_time", TRAP),
              "wary": ("aa", "training:more_epochs", "reward:watch_and_like", TRAP)}
ARMS = WORLD_ARMS[DEFAULT_WORLD]
PRE_DAYS = 14  # online/aggregate.AggregationSettings.pre_days


@dataclass(frozen=True)
class Size(FidelitySize):
    """The fidelity benchmark's world and training size, and how many experiments each arm gets."""

    sims: int = 200


QUICK = Size(users=600, log_days=6, online_days=6, epochs=1, max_train_examples=50_000, sims=40)
# the full demo's world and test length (cambrian/demo.py FULL: 2000 users, 14 logged days, Rollouts of up to 21 days)
FULL = Size(users=DEMO_FULL.users, log_days=DEMO_FULL.days, online_days=DEMO_FULL.online_days, epochs=2,
            max_train_examples=200_000, sims=200)


@dataclass
class Outcomes:
    """One model's potential outcomes: per user x online day."""

    minutes: np.ndarray
    active: np.ndarray
    hates: np.ndarray
    impressions: np.ndarray


def serve(data: Path, score: Callable, days: int) -> Outcomes:
    from cambrian.world.sim import ScorePolicy, World

    world = World.load(data)
    n = world.n_users
    out = Outcomes(*(np.zeros((n, days)) for _ in range(4)))
    for d, log in enumerate(world.run(ScorePolicy(score), days)):
        ud = log.user_days
        ids = ud["user_id"].to_numpy()
        out.minutes[ids, d] = ud["minutes"].to_numpy()
        out.active[ids, d] = ud["active"].to_numpy()
        out.impressions[ids, d] = ud["impressions"].to_numpy()
        imp = log.impressions
        hates = imp.groupby("user_id")["hate"].sum()
        out.hates[hates.index.to_numpy(), d] = hates.to_numpy()
    return out


def pre_minutes(data: Path, log_days: int) -> np.ndarray:
    """CUPED covariate as the collector computes it: minutes per day over the pre-period the log covers."""
    import pandas as pd

    ud = pd.read_parquet(data / "user_days.parquet", columns=["user_id", "day", "minutes"])
    lo = log_days - PRE_DAYS
    ud = ud[ud["day"] >= lo]
    n = int(pd.read_parquet(data / "users.parquet", columns=["user_id"])["user_id"].max()) + 1
    x = np.zeros(n)
    np.add.at(x, ud["user_id"].to_numpy(), ud["minutes"].to_numpy())
    return x / float(log_days - max(0, lo))


def arm_sums(arms: dict[str, Outcomes], assign: np.ndarray, names: tuple[str, str], first: np.ndarray,
             x: np.ndarray, closed: int) -> dict[str, dict[str, Any]]:
    """arm -> metric -> sums at closed day `closed` (0-based), the definitions of online/aggregate.py:
    units = users first exposed (first active) on or before it; Y = minutes per day in [first, closed]."""
    unit = first <= closed
    days = np.where(unit, closed - first + 1, 1).astype(float)
    cols = np.arange(arms[names[0]].minutes.shape[1])[None, :]
    window = (cols >= first[:, None]) & (cols <= closed)
    y = np.zeros(first.size)
    m = np.zeros(first.size)
    d = np.zeros(first.size)
    for k, name in enumerate(names):
        rows = assign == k
        o = arms[name]
        y[rows] = (o.minutes[rows] * window[rows]).sum(1) / days[rows]
        m[rows] = (o.hates[rows] * window[rows]).sum(1)
        d[rows] = (o.impressions[rows] * window[rows]).sum(1)
    refs = dict(ref_y=reference(y[unit]), ref_x=reference(x[unit]))
    rrefs = dict(ref_m=reference(m[unit]), ref_d=reference(d[unit]))
    out = {}
    for k, arm in enumerate(("control", "treatment")):
        sel = unit & (assign == k)
        out[arm] = {"watch_minutes": SufficientStats.from_arrays(y[sel], x[sel], **refs),
                    "hate_rate": RatioStats.from_arrays(m[sel], d[sel], **rrefs)}
    return out


def demo_policy(users: int, days: int, online_days: int, planned_by_days: bool = True):
    """decide()'s policy for the Rollouts the demo's Evolution starts, at this size. `planned_by_days` False: the
    design planned by users (users/4 per arm), the full demo's before 3 Dec 2026 and the fast demo's."""
    from dataclasses import replace

    from cambrian.demo import FULL as DEMO, evolution_object
    from cambrian.operator import api
    from cambrian.operator.reconcile.readout import policy_for

    demo = replace(DEMO, users=users, days=days, online_days=online_days, planned_by_days=planned_by_days)
    spec = api.parse_spec("Evolution", evolution_object(demo, 0, gemini=False)["spec"])
    rollout = api.RolloutSpec(
        evolution_ref=api.LocalObjectRef(name="demo"), control=api.ControlArm(name="control", bundle="file:///c"),
        treatments=[api.TreatmentArm(name="treatment", hypothesis_ref=api.LocalObjectRef(name="h"), bundle="file:///t")],
        salt="bench", ramp=spec.experiment.ramp,
        metrics=api.RolloutMetrics(north_star=spec.objective.north_star[:1], guardrails=spec.guardrails,
                                   readout=spec.experiment.readout),
        statistics=spec.experiment.statistics, decision_policy=spec.launch_policy)
    return policy_for(rollout)


def experiment(arms: dict[str, Outcomes], names: tuple[str, str], first: np.ndarray, x: np.ndarray,
               policy: Any, rng: np.random.Generator, assign: np.ndarray | None = None,
               daily: dict[int, dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """One randomised experiment, looked at after each closed day until decide() stops it (`assign`: the
    users' arms, drawn from rng when not given; `daily`: the sums by closed day of these arms and this
    assignment, filled as they are computed, so designs run on the same draw compute each day's sums once)."""
    from cambrian.stats import decide

    if assign is None:
        assign = (rng.random(first.size) < 0.5).astype(int)
    daily = {} if daily is None else daily
    state = None
    days = arms[names[0]].minutes.shape[1]
    for closed in range(days):
        if closed not in daily:
            daily[closed] = arm_sums(arms, assign, names, first, x, closed)
        sums = daily[closed]
        n = {a: sums[a]["watch_minutes"].n for a in sums}
        if min(n.values()) < 2:
            continue
        dec = decide(policy, control="control", weights={"control": 0.5, "treatment": 0.5}, stats=sums,
                     elapsed_days=closed + 1, exposures=n, state=state)
        state = dec.state
        if dec.outcome != "continue":
            eff = dec.arms["treatment"].effect
            return {"outcome": dec.outcome, "day": closed + 1, "users_per_arm": min(n.values()), "reason": dec.reason,
                    "estimate": None if eff is None else eff.estimate}
    return {"outcome": "continue", "day": days, "users_per_arm": min(n.values()), "reason": "max duration reached"}


def true_effect(t: Outcomes, c: Outcomes, first: np.ndarray) -> tuple[float, float]:
    """All users in both arms (CRN): relative effect on minutes per day since first exposure, paired s.e."""
    unit = first < t.minutes.shape[1]
    cols = np.arange(t.minutes.shape[1])[None, :]
    window = cols >= first[:, None]
    days = (t.minutes.shape[1] - first)[unit]
    yt, yc = (t.minutes * window).sum(1)[unit] / days, (c.minutes * window).sum(1)[unit] / days
    diff = yt - yc
    return float(diff.mean() / yc.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size) / yc.mean())


def fixed_test_at_end(c: Outcomes, first: np.ndarray, x: np.ndarray, draws: list[np.ndarray],
                      alpha: float = 0.05) -> dict[str, Any]:
    """A/A: the fixed-horizon test at the last day on each draw, with decide()'s estimator (CUPED, relative:
    log(μ_T/μ_C) over its delta-method s.e.) and with scipy's Welch t-test on the users' CUPED-adjusted values
    (θ over both arms). Both arms read the same potential outcomes, so any excess over α/2 per side is the
    statistic's, not the world's; and the estimate's variance across draws over its mean estimated variance
    (variance_ratio, with a 95% interval for normal draws)."""
    from cambrian.stats.estimators import analyse

    days = c.minutes.shape[1]
    sums = [arm_sums({"control": c, "treatment": c}, a, ("control", "treatment"), first, x, days - 1) for a in draws]
    effs = [analyse(s["control"]["watch_minutes"], s["treatment"]["watch_minutes"], cuped=True, relative=True)
            for s in sums]
    z = np.array([e.test_estimate / math.sqrt(e.test_variance) for e in effs])
    # the estimate's spread across draws over its mean estimated variance: 1 if decide()'s variance is right
    ratio = float(np.var([e.test_estimate for e in effs], ddof=1) / np.mean([e.test_variance for e in effs]))
    k = len(draws) - 1
    unit = first < days
    cols = np.arange(days)[None, :]
    y = (c.minutes * (cols >= first[:, None])).sum(1)[unit] / (days - first[unit])
    theta = np.cov(y, x[unit])[0, 1] / np.var(x[unit], ddof=1)
    adj = y - theta * x[unit]
    welch = np.array([sps.ttest_ind(adj[a[unit] == 1], adj[a[unit] == 0], equal_var=False).pvalue for a in draws])
    cut = float(sps.norm.isf(alpha / 2))
    rate = lambda hit: round(float(np.mean(hit)), 5)
    return {"draws": len(draws), "z_sd": round(float(z.std(ddof=1)), 4), "z_mean": round(float(z.mean()), 4),
            "z_excess_kurtosis": round(float(sps.kurtosis(z)), 3), "variance_ratio": round(ratio, 4),
            "variance_ratio_95": [round(ratio * k / float(sps.chi2.isf(0.025, k)), 4),
                                  round(ratio * k / float(sps.chi2.isf(0.975, k)), 4)],
            "promote": rate(z >= cut), "rollback": rate(z <= -cut),
            "welch_scipy_two_sided": rate(welch <= alpha),
            "nominal_per_side": alpha / 2, "se_per_side": round(math.sqrt(alpha / 2 * (1 - alpha / 2) / len(draws)), 5)}


def _blocks(runs: list[dict[str, Any]], size: int = 400) -> list[int]:
    """Promotions in each block of `size` consecutive draws: how far a figure from `size` draws can wander."""
    return [sum(r["outcome"] == "promote" for r in runs[i:i + size]) for i in range(0, len(runs) - size + 1, size)]


def _rates(runs: list[dict[str, Any]]) -> dict[str, Any]:
    decided = [r for r in runs if r["outcome"] in ("promote", "rollback")]
    share = lambda o: sum(r["outcome"] == o for r in runs) / len(runs)
    se = lambda p: round(math.sqrt(p * (1 - p) / len(runs)), 5)   # binomial Monte Carlo standard error
    return {"promote": share("promote"), "rollback": share("rollback"), "inconclusive": share("inconclusive"),
            "promote_se": se(share("promote")), "rollback_se": se(share("rollback")),
            "no_decision_by_max_duration": share("continue"),
            "median_day_of_decision": float(np.median([r["day"] for r in decided])) if decided else None,
            "median_users_per_arm_at_decision": float(np.median([r["users_per_arm"] for r in decided])) if decided else None,
            "median_day_of_stop": float(np.median([r["day"] for r in runs])),
            # what a launch reports: the lift read at the promoting look (the winner's curse: compare true_effect)
            "median_estimate_at_promotion": _median([r.get("estimate") for r in runs if r["outcome"] == "promote"])}


def _over(read: float | None, truth: float) -> float | None:
    return None if read is None or truth == 0 else round(read / truth, 3)


def _median(values: list[Any]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.median(kept)), 5) if kept else None


def first_exposure(control: Outcomes) -> np.ndarray:
    """Each user's first active online day (the number of days if never active): the same in every arm, as a
    user's days before their first request do not depend on who will serve them (see the docstring)."""
    active = control.active > 0
    return np.where(active.any(1), active.argmax(1), active.shape[1])


def truncated(o: Outcomes, days: int) -> Outcomes:
    """The first `days` online days of a model's potential outcomes: what a test ending there sees."""
    return Outcomes(o.minutes[:, :days], o.active[:, :days], o.hates[:, :days], o.impressions[:, :days])


def by_duration(outcomes: dict[str, Outcomes], x: np.ndarray, chosen: tuple[str, ...], size: Size,
                durations: tuple[int, ...], seed: int = 20261205) -> dict[str, dict[str, Any]]:
    """The demo's design with each maxDuration in `durations` (its other settings as at this size), on the same
    draws of users for every duration and arm: how the test's length moves its power at this world's effects.
    The true effect is each duration's own (minutes per day since first exposure up to its end): in this world
    effects grow while users' habits form."""
    out: dict[str, dict[str, Any]] = {}
    for days in durations:
        arms = {k: truncated(v, days) for k, v in outcomes.items()}
        c = arms["control"]
        first = first_exposure(c)
        policy = demo_policy(size.users, size.log_days, days)
        out[f"{days}d"] = {}
        for name in chosen:
            rng = np.random.default_rng(seed)  # the same users in the same arms for every duration and arm
            pair = {"control": c, "treatment": c if name == "aa" else arms[name]}
            eff, se = true_effect(pair["treatment"], c, first)
            draws = [(rng.random(first.size) < 0.5).astype(np.int8) for _ in range(size.sims)]
            runs = [experiment(pair, ("control", "treatment"), first, x, policy, rng, a) for a in draws]
            out[f"{days}d"][name] = {"true_effect": round(eff, 5), "true_effect_se": round(se, 5), **_rates(runs)}
    return out


def run(quick: bool = False, progress: Callable[[str], None] | None = None, size: Size | None = None,
        arms: tuple[str, ...] | None = None, sims: int | None = None,
        durations: tuple[int, ...] | None = None, users: int | None = None, world: str = DEFAULT_WORLD) -> dict:
    """`arms`: a subset of the world's arms (WORLD_ARMS) to train and simulate (default all; "aa" alone needs only
    Φ0); `sims`: experiments per arm (default the size's); `durations`: also compare the design at these
    maxDurations (days) on the same draws (`by_duration`); the models are then served for the longest, which the
    main figures use too; `users`: the world's users instead of the size's (the demo's design is planned for
    them: its first look waits for users/8 per arm); `world`: a benchmark world of bench/fidelity with its own
    Φ0 and candidates."""
    from cambrian.bench.throughput import load_now
    from cambrian.errors import ConfigError
    from cambrian.world.generate import generate

    say = progress or (lambda msg: None)
    size = size or (QUICK if quick else FULL)
    if sims is not None:
        size = replace(size, sims=sims)
    if users is not None:
        size = replace(size, users=users)
    if durations:
        size = replace(size, online_days=max(durations))
    setup = bench_world(world)
    if world not in WORLD_ARMS:
        raise ConfigError(f"decision-world: no arms for world {world!r}; choose one of {', '.join(WORLD_ARMS)}")
    known = WORLD_ARMS[world]
    chosen = tuple(arms or known)
    unknown = [a for a in chosen if a not in known]
    if unknown:
        raise ConfigError(f"decision-world: unknown arm(s) {unknown} for world {world!r}; choose from {', '.join(known)}")
    t0, load_start = time.perf_counter(), load_now()
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-decision-world-") as tmp:
        data = Path(tmp) / "world"
        generate(data, n_users=size.users, days=size.log_days, seed=0, preset=setup.preset, force=True)
        _, base_score = train_model(candidate_config(size, {}, setup.base), data)
        outcomes = {"control": serve(data, base_score, size.online_days)}
        for name in chosen:
            if name == "aa":
                continue
            _, score = train_model(candidate_config(size, setup.candidates[name][1], setup.base), data)
            outcomes[name] = serve(data, score, size.online_days)
            say(f"{name}: served")
        x = pre_minutes(data, size.log_days)
    c = outcomes["control"]
    first = first_exposure(c)
    unit = first < size.online_days
    # the world's noise as the test sees it at the end: per-user minutes/day since exposure vs the pre-period
    cols = np.arange(size.online_days)[None, :]
    y_end = (c.minutes * (cols >= first[:, None])).sum(1)[unit] / (size.online_days - first[unit])
    rho = float(np.corrcoef(y_end, x[unit])[0, 1])
    cv = float(y_end.std(ddof=1) / y_end.mean())
    policy = demo_policy(size.users, size.log_days, size.online_days)  # planned by days (cambrian/demo.py FULL)
    by_users = demo_policy(size.users, size.log_days, size.online_days, planned_by_days=False)
    by_days_exact = replace(policy, boundary_rule="exact")
    # the same design judged on the north star alone: does the sequential test itself launch a change whose first
    # days flatter it (the wary world's trap), or is it the guardrail that stops it?
    no_guardrails = replace(policy, guardrails=())
    z = sps.norm.isf(0.025) + sps.norm.isf(0.2)
    rng = np.random.default_rng(20261201)
    arms_out = {}
    for name in chosen:
        treat = "control" if name == "aa" else name
        pair = {"control": c, "treatment": outcomes[treat]}
        eff, se = true_effect(pair["treatment"], c, first)
        draws = [(rng.random(first.size) < 0.5).astype(np.int8) for _ in range(size.sims)]
        daily = [{} for _ in draws]  # each draw's sums by day, shared by the four designs
        designs = [[experiment(pair, ("control", "treatment"), first, x, p, rng, a, sums)
                    for a, sums in zip(draws, daily)] for p in (policy, by_users, by_days_exact, no_guardrails)]
        runs, users_runs, exact_runs, bare_runs = designs
        rates = _rates(runs)
        arms_out[name] = {
            "true_effect": round(eff, 5), "true_effect_se": round(se, 5),
            **rates,
            "median_estimate_at_promotion_over_true_effect": _over(rates["median_estimate_at_promotion"], eff),
            "fixed_cuped_users_per_arm_for_80pct_power": (
                None if eff == 0 else int(math.ceil(2 * z**2 * (1 - rho**2) * cv**2 / eff**2))),
            "reasons": sorted({r["reason"][:120] for r in runs})[:4],
            # the same users in the same arms, the design planned by users/4 per arm (the demo's before 3 Dec)
            "planned_users": {**_rates(users_runs), "reasons": sorted({r["reason"][:120] for r in users_runs})[:4]},
            # the same design with the exact boundaries it had before (independent increments assumed)
            "by_days_exact_boundaries": _rates(exact_runs),
            # the same design without its guardrails (the north star decides alone)
            "without_guardrails": {**_rates(bare_runs), "reasons": sorted({r["reason"][:120] for r in bare_runs})[:4]},
        }
        if name == "aa":
            arms_out[name]["fixed_test_at_max_duration"] = fixed_test_at_end(c, first, x, draws, policy.alpha)
            arms_out[name]["promotions_per_400_draws"] = _blocks(runs)
            arms_out[name]["by_days_exact_boundaries"]["promotions_per_400_draws"] = _blocks(exact_runs)
        say(f"{name}: {arms_out[name]}")
    gain = known[2]
    return {
        "name": "decision-world",
        "command": "cambrian bench run decision-world" + (" --quick" if quick else "")
                   + (f" --world {world}" if world != DEFAULT_WORLD else "")
                   + (f" --users {users}" if users is not None else "")
                   + (f" --arms {','.join(chosen)}" if chosen != known else "")
                   + (f" --sims {sims}" if sims is not None else "")
                   + (f" --durations {','.join(map(str, sorted(durations)))}" if durations else ""),
        "quick": quick,
        **({"ratio": arms_out[gain]["promote"],
            "ratio_meaning": (f"share of simulated experiments in which the demo's decision policy promotes the "
                              f"{world} world's largest genuine gain ({gain}) within the demo's maximum duration; "
                              "the other arms' rates beside it (A/A, more epochs, clickbait trap)")}
           if gain in arms_out else
           {"ratio": arms_out[chosen[0]]["promote"],
            "ratio_meaning": (f"share of simulated {chosen[0]} experiments that the demo's design (planned by days, "
                              "no plannedSamplePerArm) promotes; the design planned by users on the same draws "
                              "beside it")}),
        "world": {"preset": setup.preset, "seed": 0, "users": size.users, "log_days": size.log_days,
                  "online_days": size.online_days, "users_ever_exposed": int(unit.sum())},
        "minutes_per_day_cv": round(cv, 4), "cuped_rho": round(rho, 4),
        "policy": {"horizon": policy.horizon, "min_users_per_arm": policy.min_users_per_arm,
                   "max_days": policy.max_days, "sequential": policy.sequential,
                   "guardrails": [g.metric for g in policy.guardrails],
                   "boundaries": "union (decide()'s rule for horizon days); by_days_exact_boundaries: exact",
                   "ramp": "none: 50/50 from day 1 (the demo ramps 10/25/50 over its first days)"},
        "planned_users_policy": {"planned_users_per_arm": by_users.planned_users_per_arm,
                                 "min_users_per_arm": by_users.min_users_per_arm, "horizon": by_users.horizon,
                                 "boundaries": "exact"},
        "simulations_per_arm": size.sims,
        "arms": arms_out,
        **({"by_duration": by_duration(outcomes, x, chosen, size, tuple(sorted(durations)))} if durations else {}),
        "load_average_start": load_start,
        "load_average_end": load_now(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
