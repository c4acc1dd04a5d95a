"""`cambrian bench run decision`: users needed for a correct launch decision, every method against the
fixed-horizon test *with the same variance reduction*, each component on its own.

Simulated experiments (all measured in this run, one generator for every method):
* each day `USERS_PER_DAY` new users per arm arrive with a pre-period covariate X and outcome
  Y = ρX + √(1−ρ²)ε (+δ·k in treatment), ρ = 0.7 (the reference's realistic CUPED correlation); the
  per-arm sums are drawn from their exact sampling law (cambrian.stats.calibration.normal_day);
* every method sees only the cumulative per-arm sums and uses the kernels of cambrian.stats (the
  same code decide() runs): the test-scale estimate and variance, CUPED or not;
* the design effect δ gives the fixed-horizon test *with CUPED* 80% power at FIXED_DAYS days of users;
  without CUPED the fixed test needs 1/(1−ρ²) times the users for the same power;
* the effect mix: k ∈ {0, ½, 1, 2, −1} × δ (null, half, design, double, harmful), equally weighted.

Methods, each with CUPED off and on:
* fixed: one look at the planned users (two-sided z-test at α);
* msprt: decide(sequential="msprt"), the always-valid mixture SPRT at every daily look (τ matched to
  the plan), truncated at the first day its power at δ reaches the fixed test's (equal power);
* group sequential: decide()'s default, Lan-DeMets α-spending boundaries at daily looks
  (O'Brien-Fleming-type and Pocock-type, with and without the futility stop), the planned horizon
  the shortest whose power at δ reaches the fixed test's; boundaries exact (independent increments, as
  here: new users every day, decide()'s design with plannedSamplePerArm);
* group sequential with union boundaries (each look tested alone at the α it spends: decide()'s design
  ending at maxDuration, valid for any correlation between looks), O'Brien-Fleming-type, with and without
  futility (--quick: with futility only, beside the exact one): what not assuming independent increments costs.
A decision stops the experiment (promote when significantly better, rollback when significantly
worse); users = users per arm at the stop. Ratios are E[users] over the effect mix / fixed users.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import stats

from cambrian.stats import DecisionPolicy, Metric, SufficientStats, decide
from cambrian.stats.calibration import normal_day
from cambrian.stats.estimators import mean_inference_kernel
from cambrian.stats.groupsequential import boundaries, conditional_power, look_boundary, planned_drift, spent_by
from cambrian.stats.sequential import msprt_p_value, rho_for_information

ALPHA = 0.05
POWER = 0.80
RHO = 0.7
USERS_PER_DAY = 200          # per arm; the statistics are scale-free, this sets the look granularity
FIXED_DAYS = 20              # the fixed test with CUPED needs 20 days of users at the design effect
MIX = (0.0, 0.5, 1.0, 2.0, -1.0)
SPENDINGS = ("obrien-fleming", "pocock")
FUTILITY = 0.1               # decide()'s default minimum conditional power for group designs


def _z_by_day(rng, sims: int, effect: float, days: int) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """Daily cumulative test-scale (estimate, variance) for CUPED off and on: shapes (days, sims)."""
    cum = np.zeros((2, 8, sims))
    out = {False: (np.zeros((days, sims)), np.zeros((days, sims))),
           True: (np.zeros((days, sims)), np.zeros((days, sims)))}
    for d in range(days):
        for arm in (0, 1):
            cum[arm] += normal_day(rng, sims, USERS_PER_DAY, effect if arm else 0.0, rho=RHO, ref_y=0.0)
        cum[:, 6:] = 0.0   # references stay 0 (the sums of references above are not sums)
        for cuped in (False, True):
            est, var, _ = mean_inference_kernel(tuple(cum[0]), tuple(cum[1]), cuped, False)
            out[cuped][0][d], out[cuped][1][d] = est, var
    return out


def _fixed(rng, sims: int, users: int, effect: float, cuped: bool) -> np.ndarray:
    """z of one look at `users` per arm."""
    c = normal_day(rng, sims, users, 0.0, rho=RHO)
    t = normal_day(rng, sims, users, effect, rho=RHO)
    est, var, _ = mean_inference_kernel(tuple(c), tuple(t), cuped, False)
    return est / np.sqrt(var)


def _first(mask: np.ndarray) -> np.ndarray:
    """1-based first day where mask (days, sims) holds, else inf."""
    return np.where(mask.any(0), mask.argmax(0) + 1.0, np.inf)


def _msprt_stops(est, var, tau):
    p = np.minimum.accumulate(msprt_p_value(est, var, tau), axis=0)
    sig = p < ALPHA
    day = _first(sig)
    # direction at the stopping look
    idx = np.where(np.isfinite(day), day - 1, 0).astype(int)
    sign = np.sign(est[idx, np.arange(est.shape[1])])
    return day, sign


def _rule_boundaries(fr, spending: str, rule: str) -> list[float]:
    """Boundaries of looks at spending times ``fr`` (information proportional to them) under ``rule``
    (groupsequential's exact recursion or union bound), as update_group computes them."""
    if rule == "exact":
        return boundaries(fr, ALPHA, spending)
    c: list[float] = []
    for k, t in enumerate(fr):
        c.append(look_boundary(rule, fr[:k + 1], c, spent_by(t, ALPHA, spending, rule)
                               - (spent_by(fr[k - 1], ALPHA, spending, rule) if k else 0.0)))
    return c


def _gs_stops(est, var, horizon: int, spending: str, futility: float | None, rule: str = "exact"):
    """First look where |z| crosses the α-spending boundary (sign ±1), or where the conditional power
    under the planned effect falls below `futility` (sign 0: stopped without a launch)."""
    fr = [k / horizon for k in range(1, horizon + 1)]
    c = np.array(_rule_boundaries(fr, spending, rule))
    z = est[:horizon] / np.sqrt(var[:horizon])
    stop = np.abs(z) >= c[:, None]
    fut = np.zeros_like(stop)
    if futility is not None:
        c_final = np.array([_rule_boundaries((*fr[:k + 1], 1.0), spending, rule)[-1] for k in range(horizon - 1)]
                           + [np.inf])
        t = np.array(fr)[:, None]
        fut = (conditional_power(z, t, c_final[:, None], planned_drift(ALPHA, POWER)) < futility) & (t < 1) & ~stop
    day = _first(stop | fut)
    idx = np.where(np.isfinite(day), day - 1, 0).astype(int)
    cols = np.arange(z.shape[1])
    sign = np.where(stop[idx, cols], np.sign(z[idx, cols]), 0.0)
    return day, sign


def _summary(day, sign, cap: float, n_fixed: float) -> dict:
    """Users per arm at the stop (capped at the horizon), promote and rollback rates."""
    stop = np.minimum(day, cap)
    decided = np.isfinite(day) & (day <= cap)
    return {"users": float(stop.mean() * USERS_PER_DAY), "ratio": float(stop.mean() * USERS_PER_DAY / n_fixed),
            "promote": float(np.mean(decided & (sign > 0))), "rollback": float(np.mean(decided & (sign < 0))),
            "stopped_for_futility": float(np.mean(decided & (sign == 0)))}


def _decide_stop_day(est_days: int, daily: list, policy: DecisionPolicy) -> int | None:
    """The day decide() stops (promote, rollback, futility), None when it runs to the end of the
    horizon without a decision (the group design's final look ends inconclusive, as the kernel's)."""
    cum = [SufficientStats(), SufficientStats()]
    state = None
    for d in range(est_days):
        cum = [cum[a].merge(SufficientStats(*daily[d][a])) for a in (0, 1)]
        dec = decide(policy, control="c", weights={"c": 0.5, "t": 0.5},
                     stats={"c": {"y": cum[0]}, "t": {"y": cum[1]}}, elapsed_days=d + 1, state=state)
        state = dec.state
        if dec.outcome in ("promote", "rollback", "inconclusive"):
            return None if "final analysis" in dec.reason else d + 1
    return None


def run(quick: bool = False) -> dict:
    """The full run measures every variant with 4000 experiments per effect; --quick (the CI size)
    only fixed, mSPRT and the Pocock-type design with futility, 400 per effect."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    sims = 400 if quick else 4000
    # the union rule (a design ending at maxDuration, decide()'s horizon "days") beside the exact one: its cost
    variants = ([("pocock", FUTILITY, "exact")] + [("obrien-fleming", FUTILITY, r) for r in ("exact", "union")] if quick else
                [(sp, f, "exact") for sp in SPENDINGS for f in (None, FUTILITY)]
                + [("obrien-fleming", f, "union") for f in (None, FUTILITY)])
    rng = np.random.default_rng(20261130)
    z_a, z_b = stats.norm.isf(ALPHA / 2), stats.norm.isf(1 - POWER)
    n_fixed = {True: FIXED_DAYS * USERS_PER_DAY}
    delta = (z_a + z_b) * math.sqrt(2 * (1 - RHO**2) / n_fixed[True])
    n_fixed[False] = int(round(n_fixed[True] / (1 - RHO**2)))
    max_days = int(math.ceil(2 * n_fixed[False] / USERS_PER_DAY))

    sim = {k: _z_by_day(rng, sims, k * delta, max_days) for k in MIX}
    methods: dict[str, dict] = {}
    for cuped in (False, True):
        tag = "cuped" if cuped else "no_cuped"
        nf = n_fixed[cuped]
        # fixed horizon, same variance reduction
        power_fixed = float(np.mean(_fixed(rng, sims, nf, delta, cuped) > z_a))
        fixed = {"users_per_arm": nf, "power": power_fixed, "mix_ratio": 1.0, "by_effect": {}}
        for k in MIX:
            z = _fixed(rng, sims, nf, k * delta, cuped) if k != 1.0 else None
            fixed["by_effect"][str(k)] = {"users": float(nf), "ratio": 1.0,
                                          "promote": power_fixed if z is None else float(np.mean(z > z_a)),
                                          "rollback": float(np.mean(z < -z_a)) if z is not None else 0.0}
        methods[f"fixed_{tag}"] = fixed
        # mSPRT, τ matched to the plan as decide() does, truncated at equal power
        v_star = 2 * ((1 - RHO**2) if cuped else 1.0) / nf
        tau = 1 / math.sqrt(rho_for_information(1 / v_star, ALPHA))
        stops = {k: _msprt_stops(*sim[k][cuped], tau) for k in MIX}
        day1, sign1 = stops[1.0]
        power_by_day = np.array([np.mean((day1 <= d) & (sign1 > 0)) for d in range(1, max_days + 1)])
        reach = np.nonzero(power_by_day >= power_fixed)[0]
        cap = float(reach[0] + 1) if reach.size else float(max_days)
        m = {"tau": tau, "horizon_days": cap, "power": float(power_by_day[int(cap) - 1]),
             "reaches_fixed_power": bool(reach.size), "by_effect": {}}
        for k in MIX:
            m["by_effect"][str(k)] = _summary(*stops[k], cap, nf)
        methods[f"msprt_{tag}"] = m
        # group sequential: the shortest planned horizon whose power reaches the fixed test's
        for spending, futility, rule in variants:
            lo, hi = FIXED_DAYS if cuped else int(n_fixed[False] / USERS_PER_DAY), max_days
            best = None
            while lo <= hi:          # power grows with the horizon: bisection
                mid = (lo + hi) // 2
                d, s = _gs_stops(*sim[1.0][cuped], mid, spending, futility, rule)
                pw = float(np.mean(np.isfinite(d) & (s > 0)))
                if pw >= power_fixed:
                    best, hi = (mid, pw), mid - 1
                else:
                    lo = mid + 1
            horizon, pw = best if best else (max_days, pw)
            g = {"spending": spending, "futility": futility, "boundary_rule": rule, "horizon_days": horizon,
                 "power": pw, "reaches_fixed_power": best is not None, "by_effect": {}}
            for k in MIX:
                g["by_effect"][str(k)] = _summary(*_gs_stops(*sim[k][cuped], horizon, spending, futility, rule),
                                                  horizon, nf)
            name = f"group_{spending}{'_futility' if futility else ''}{'_union' if rule == 'union' else ''}_{tag}"
            methods[name] = g
    for name, m in methods.items():
        if not name.startswith("fixed"):
            m["mix_ratio"] = float(np.mean([m["by_effect"][str(k)]["ratio"] for k in MIX]))
            m["harmful_cut_speedup"] = 1 / m["by_effect"]["-1.0"]["ratio"]
            m["mix_users"] = m["mix_ratio"] * n_fixed["cuped" in name and "no_cuped" not in name]

    # the headline is the best design whose boundaries are exact (valid here: new users every day, independent
    # increments); the union rows price the design that does not assume it
    seq_names = [n for n in methods if not n.startswith("fixed") and n.endswith("_cuped") and "no_cuped" not in n
                 and "_union" not in n]
    best = min(seq_names, key=lambda n: methods[n]["mix_ratio"])
    best_raw = best.replace("_cuped", "_no_cuped")
    headline = methods[best]["mix_ratio"]
    components = {
        "cuped_alone": n_fixed[True] / n_fixed[False],
        "sequential_alone": methods[best_raw]["mix_ratio"],
        "both_vs_fixed_without_cuped": methods[best]["mix_users"] / n_fixed[False],
        "sequential_given_cuped": headline,
        "msprt_given_cuped": methods["msprt_cuped"]["mix_ratio"],
        "msprt_alone": methods["msprt_no_cuped"]["mix_ratio"],
    }

    # A/A under daily looks: false decisions of each sequential method, and naive peeking.
    null_est, null_var = sim[0.0][True]
    z_null = null_est / np.sqrt(null_var)
    fpr = {name: m["by_effect"]["0.0"]["promote"] + m["by_effect"]["0.0"]["rollback"]
           for name, m in methods.items() if not name.startswith("fixed")}
    fpr["naive_peeking_daily_cuped"] = float(np.mean((np.abs(z_null[:FIXED_DAYS]) >= z_a).any(0)))

    # decide() on a sample of the design-effect experiments stops on the same day as the kernels.
    n_check = 5 if quick else 20
    check_rng = np.random.default_rng(7)
    g = methods[best]
    policy = DecisionPolicy(Metric("y", relative=False, cuped=True), planned_users_per_arm=int(g["horizon_days"]) * USERS_PER_DAY,
                            min_users_per_arm=0, max_days=g["horizon_days"], alpha=ALPHA, horizon="users",
                            sequential="group" if best.startswith("group") else "msprt",
                            spending=g.get("spending", "obrien-fleming"), futility=g.get("futility"))
    agree = 0
    for _ in range(n_check):
        daily = [[normal_day(check_rng, 1, USERS_PER_DAY, e, rho=RHO, ref_y=0.0)[:, 0] for e in (0.0, delta)]
                 for _ in range(int(g["horizon_days"]))]
        cum = np.cumsum(np.array(daily), axis=0)
        cum[:, :, 6:] = 0.0
        est = np.array([mean_inference_kernel(tuple(cum[d, 0]), tuple(cum[d, 1]), True, False)[:2]
                        for d in range(cum.shape[0])])
        if best.startswith("group"):
            kd, _ = _gs_stops(est[:, :1], est[:, 1:], int(g["horizon_days"]), g["spending"], g["futility"])
        else:
            kd, _ = _msprt_stops(est[:, :1], est[:, 1:], methods[best]["tau"])
        kernel_day = kd[0] if np.isfinite(kd[0]) else None
        agree += _decide_stop_day(int(g["horizon_days"]), daily, policy) == kernel_day

    harm = methods[best]["harmful_cut_speedup"]
    return {
        "name": "decision",
        "ratio": headline,
        "ratio_meaning": (f"expected users per arm to a decision over the effect mix {{0, ½, 1, 2, −1}}×δ, "
                          f"{best} (daily looks) / fixed-horizon test with the same CUPED, at equal power at δ "
                          f"(lower is better)"),
        "command": "cambrian bench run decision" + (" --quick" if quick else ""),
        "quick": quick,
        "simulations_per_effect": sims,
        "alpha": ALPHA,
        "power_target": POWER,
        "cuped_rho": RHO,
        "users_per_arm_per_day": USERS_PER_DAY,
        "design_effect_sd": delta,
        "fixed_users_per_arm": {"cuped": n_fixed[True], "no_cuped": n_fixed[False]},
        "effect_mix": list(MIX),
        "best_sequential": best,
        "components": components,
        "harmful_cut_speedup": harm,
        "false_decision_rate_aa": fpr,
        "fpr_standard_error": math.sqrt(ALPHA * (1 - ALPHA) / sims),
        "methods": methods,
        "decide_agreement": f"{agree}/{n_check}",
        "targets_met": {"mix_ratio<=0.8_vs_fixed_with_same_cuped": headline <= 0.8,
                        "harmful_cut>=2x_sooner": harm >= 2.0,
                        "false_decisions<=alpha": all(v <= ALPHA for k, v in fpr.items() if not k.startswith("naive"))},
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=2))
