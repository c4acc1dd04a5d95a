"""`cambrian bench decision`: users needed for a correct launch decision, sequential + CUPED versus a
fixed-horizon t-test without CUPED, at the same power, plus false-positive rates under daily looks.

Simulated experiments (all measured in this run, same generator for every method):
* each day `users_per_day` new users per arm arrive with a pre-period covariate X and outcome
  Y = ρX + √(1−ρ²)ε (+δ in treatment), ρ = 0.7 (the reference's realistic CUPED correlation);
* the collector's view is only the cumulative per-arm sums (n, ΣY, ΣY², ΣX, ΣX², ΣXY), and every
  method is computed from them by the kernels in cambrian.stats;
* baseline: a fixed-horizon Welch z-test on Y (no CUPED) at n_fixed users per arm, the classic
  sample size for 80% power at δ; it looks once;
* candidate: CUPED + mSPRT always-valid p-value at every daily look (τ² = 1/ρ with ρ tuned to the
  planned information at n_fixed users, as decide() does by default), stopped at the first significant
  look and truncated at the first look where its power reaches the baseline's measured power.
Headline ratio = expected users per arm of the candidate / n_fixed at equal power (< 1 is better).
A subset of simulated experiments is also run through decide() look by look to check that the
operator's decision rule stops on the same day as the vectorised kernels.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import stats

from cambrian.stats import DecisionPolicy, Metric, SufficientStats, decide
from cambrian.stats.estimators import combine, cuped_arm_means
from cambrian.stats.sequential import msprt_p_value, planned_information, rho_for_information

ALPHA = 0.05
POWER = 0.80
RHO = 0.7
USERS_PER_DAY = 200          # per arm; the statistics are scale-free, this sets the look granularity
FIXED_DAYS = 20              # the baseline's horizon in days (δ is set so n_fixed = 20 days of users)
MAX_DAYS = 40                # the sequential test may run up to twice the baseline's horizon


def _day_sums(rng: np.random.Generator, sims: int, users: int, delta: float) -> np.ndarray:
    """Per-user data for one day of one arm, reduced at once to the six sums: shape (6, sims)."""
    x = rng.standard_normal((sims, users))
    y = RHO * x + math.sqrt(1 - RHO**2) * rng.standard_normal((sims, users)) + delta
    return np.stack([np.full(sims, float(users)), y.sum(1), (y * y).sum(1), x.sum(1), (x * x).sum(1),
                     (x * y).sum(1)])


def _simulate(rng, sims: int, delta: float, days: int, tau: float) -> dict[str, np.ndarray]:
    """Daily looks for `sims` experiments: CUPED+mSPRT running p, naive z, cumulative sums."""
    cum = np.zeros((2, 6, sims))
    p_seq = np.ones((days, sims))
    est_seq = np.zeros((days, sims))
    z_raw = np.zeros((days, sims))
    daily = np.zeros((days, 2, 6, sims))
    for d in range(days):
        for arm in (0, 1):
            daily[d, arm] = _day_sums(rng, sims, USERS_PER_DAY, delta if arm else 0.0)
            cum[arm] += daily[d, arm]
        est, var = combine(*cuped_arm_means(tuple(cum[0]), tuple(cum[1]), cuped=True)[:4])
        p_seq[d] = msprt_p_value(est, var, tau)
        est_seq[d] = est
        e_raw, v_raw = combine(*cuped_arm_means(tuple(cum[0]), tuple(cum[1]), cuped=False)[:4])
        z_raw[d] = e_raw / np.sqrt(v_raw)
    return {"p_seq": np.minimum.accumulate(p_seq, axis=0), "est_seq": est_seq, "z_raw": z_raw, "daily": daily}


def _fixed_test(rng, sims: int, n: int, delta: float) -> np.ndarray:
    """Fixed horizon without CUPED: one Welch z-test at n users per arm; returns z."""
    c, t = _day_sums(rng, sims, n, 0.0), _day_sums(rng, sims, n, delta)
    est, var = combine(*cuped_arm_means(tuple(c), tuple(t), cuped=False)[:4])
    return est / np.sqrt(var)


def _decide_stop_day(daily: np.ndarray, policy: DecisionPolicy, days: int) -> int | None:
    """Run one simulated experiment through decide() look by look; the first promote day (1-based)."""
    cum = [SufficientStats(), SufficientStats()]
    state = None
    for d in range(days):
        cum = [cum[a].merge(SufficientStats(*daily[d, a])) for a in (0, 1)]
        dec = decide(policy, control="c", weights={"c": 0.5, "t": 0.5},
                     stats={"c": {"y": cum[0]}, "t": {"y": cum[1]}}, elapsed_days=d + 1, state=state)
        state = dec.state
        if dec.outcome == "promote":
            return d + 1
    return None


def run(quick: bool = False) -> dict:
    t0 = time.perf_counter()
    sims = 1000 if quick else 10000
    n_check = 10 if quick else 60
    rng = np.random.default_rng(20261123)
    z_a, z_b = stats.norm.isf(ALPHA / 2), stats.norm.isf(1 - POWER)
    n_fixed = FIXED_DAYS * USERS_PER_DAY
    delta = (z_a + z_b) * math.sqrt(2 / n_fixed)              # σ = 1: 80% power at exactly n_fixed
    # τ matched to the plan: ρ_CS tuned to the information at n_fixed users with CUPED (τ² = 1/ρ_CS).
    info_star = planned_information(2 * (1 - RHO**2) / n_fixed, n_fixed, n_fixed)
    tau = 1 / math.sqrt(rho_for_information(info_star, ALPHA))

    # True lift: when does each method reach a correct decision (promote)?
    alt = _simulate(rng, sims, delta, MAX_DAYS, tau)
    hit = (alt["p_seq"] < ALPHA) & (alt["est_seq"] > 0)
    stop_day = np.where(hit.any(0), hit.argmax(0) + 1, np.inf)
    power_fixed = float(np.mean(_fixed_test(rng, sims, n_fixed, delta) > z_a))
    power_by_day = np.array([np.mean(stop_day <= d) for d in range(1, MAX_DAYS + 1)])
    reach = np.nonzero(power_by_day >= power_fixed)[0]
    if reach.size == 0:
        raise RuntimeError(f"sequential power {power_by_day[-1]:.3f} never reached {power_fixed:.3f} in {MAX_DAYS} days")
    trunc_day = int(reach[0] + 1)                                # equal-power truncation
    users_seq = np.minimum(stop_day, trunc_day) * USERS_PER_DAY
    expected_users_seq = float(users_seq.mean())

    # Same experiments through the operator's decide(): the stop day must match the kernels.
    policy = DecisionPolicy(Metric("y", relative=False, cuped=True), planned_users_per_arm=n_fixed,
                            min_users_per_arm=0, max_days=MAX_DAYS, alpha=ALPHA, tau=tau)
    agree = sum(
        (_decide_stop_day(alt["daily"][:, :, :, i], policy, MAX_DAYS) or math.inf) == stop_day[i]
        for i in range(n_check))

    # A/A: false positives under daily looks.
    null = _simulate(rng, sims, 0.0, MAX_DAYS, tau)
    fpr_seq = float(np.mean(null["p_seq"][-1] < ALPHA))          # any look up to MAX_DAYS (running min)
    fpr_naive = float(np.mean((np.abs(null["z_raw"][:FIXED_DAYS]) > z_a).any(0)))
    fpr_fixed = float(np.mean(np.abs(_fixed_test(rng, sims, n_fixed, 0.0)) > z_a))
    se = math.sqrt(ALPHA * (1 - ALPHA) / sims)

    ratio = expected_users_seq / n_fixed
    return {
        "name": "decision",
        "ratio": ratio,
        "ratio_meaning": ("expected users per arm to a correct launch decision, sequential mSPRT + CUPED with "
                          "daily looks / fixed-horizon t-test without CUPED, at equal power (lower is better)"),
        "command": "cambrian bench run decision" + (" --quick" if quick else ""),
        "quick": quick,
        "simulations": sims,
        "alpha": ALPHA,
        "cuped_rho": RHO,
        "users_per_arm_per_day": USERS_PER_DAY,
        "true_lift_sd": delta,
        "tau": tau,
        "fixed_horizon_users_per_arm": n_fixed,
        "fixed_horizon_power": power_fixed,
        "sequential_truncation_day": trunc_day,
        "sequential_power_at_truncation": float(power_by_day[trunc_day - 1]),
        "sequential_expected_users_per_arm": expected_users_seq,
        "sequential_median_stop_day": float(np.median(np.minimum(stop_day, trunc_day))),
        "users_ratio_at_power_quantile": trunc_day * USERS_PER_DAY / n_fixed,
        "fpr_sequential_cuped_daily_looks": fpr_seq,
        "fpr_sequential_looks": MAX_DAYS,
        "fpr_naive_peeking_daily": fpr_naive,
        "fpr_naive_looks": FIXED_DAYS,
        "fpr_fixed_horizon_single_look": fpr_fixed,
        "fpr_standard_error": se,
        "decide_agreement": f"{agree}/{n_check}",
        "targets_met": {"fpr_sequential<=alpha": fpr_seq <= ALPHA, "users_reduction>=30%": ratio <= 0.7},
        "seconds": time.perf_counter() - t0,
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=2))
