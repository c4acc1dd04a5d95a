"""Calibration of decide() by simulation: A/A and A/B experiments fed look by look through the real
decision rule, counting false promotions and false rollbacks.

Each simulated day adds ``users`` new users per arm; the decision sees only cumulative per-arm sums,
as the operator does. Metric types (data drawn vectorised over simulations, then one decide() call
per simulation and look, stopping at the first promote or rollback):

* ``mean``: a continuous per-user metric Y = 5 + 2(ρX + √(1−ρ²)ε) with a pre-period covariate X
  (ρ = 0.7), sums drawn exactly (bivariate normal mean and Wishart scatter);
* ``rate``: a 0/1 per-user metric with probability ``base`` (e.g. a conversion); the covariate is the
  same event in the pre-period (P(Y=1 | X=1) = min(0.9, 4·base));
* ``ratio``: clicks/impressions per user, impressions 1 + Poisson(9), clicks Binomial with a per-user
  rate Beta-distributed around ``base`` (concentration 20): users, not impressions, are the unit.

With guardrails on, every experiment also carries an A/A guardrail metric (a ``rate`` at 5%, lower is
better, 10% relative margin): a guardrail that fails under no effect is a false rollback.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as sst

from .decision import DecisionPolicy, Metric, decide
from .guardrails import Guardrail
from .sums import RatioStats, SufficientStats

MetricType = Literal["mean", "rate", "ratio"]
RHO = 0.7


@dataclass(frozen=True)
class Cell:
    """One calibration setting; ``effect`` is the true relative change of the treatment's mean."""

    metric: MetricType
    base: float
    users: int               # per arm per day
    looks: int               # daily looks (= max days)
    relative: bool = True
    cuped: bool = True
    guardrails: bool = False
    effect: float = 0.0
    alpha: float = 0.05
    sequential: str = "group"        # decide()'s test: group (the default: α-spending, futility on) or msprt
    # Off-plan designs (group): planned users = plan × users × days; looks per day (users split evenly
    # between them: extra looks); a look only every `every` days (missed looks; the last day always looks).
    plan: float = 1.0
    per_day: int = 1
    every: int = 1
    horizon: str = "days"            # the group design ends at the last day, or ("users") at the plan if sooner

    def __post_init__(self) -> None:
        if self.per_day < 1 or self.every < 1 or not self.plan > 0 or self.users // self.per_day < 2:
            raise ValueError(f"Cell: need per_day >= 1, every >= 1, plan > 0 and >= 2 users per look: {self}")

    def label(self) -> str:
        off_plan = (f" plan={self.plan:g} per_day={self.per_day} every={self.every} horizon={self.horizon}"
                    if (self.plan, self.per_day, self.every, self.horizon) != (1.0, 1, 1, "days") else "")
        return (f"{self.metric} base={self.base:g} users/day={self.users} looks={self.looks} "
                f"{'relative' if self.relative else 'absolute'} cuped={'on' if self.cuped else 'off'} "
                f"guardrails={'on' if self.guardrails else 'off'} effect={self.effect:+g} {self.sequential}{off_plan}")

    def look_ticks(self) -> list[int]:
        """1-based ticks (a tick = 1/per_day of a day) at which decide() looks."""
        return [j for j in range(1, self.looks * self.per_day + 1)
                if (d := -(-j // self.per_day)) % self.every == 0 or d == self.looks]


# ------------------------------------------------------------------------------ daily sums --------

def normal_day(rng, sims: int, users: int, mean_y: float, sd: float = 1.0, rho: float = RHO,
               ref_y: float | None = None) -> np.ndarray:
    """(8, sims) SufficientStats fields for one day of one arm of a normal metric Y = mean_y +
    sd(ρX + √(1−ρ²)ε) with covariate X ~ N(0, sd²), drawn from the exact sampling law of the sums
    (bivariate-normal means and a Wishart scatter matrix), so its cost does not grow with users."""
    cov = sd**2 * np.array([[1.0, rho], [rho, 1.0]])
    means = np.array([0.0, mean_y]) + rng.multivariate_normal(np.zeros(2), cov / users, size=sims)
    scatter = sst.wishart(df=users - 1, scale=cov).rvs(size=sims, random_state=rng).reshape(sims, 2, 2)
    x_bar, y_bar = means[:, 0], means[:, 1]
    ref_x, ref_y = 0.0, (mean_y if ref_y is None else ref_y)
    # Σ(a−r)(b−r') = scatter_ab + n(ā−r)(b̄−r')
    sxx = scatter[:, 0, 0] + users * (x_bar - ref_x) ** 2
    syy = scatter[:, 1, 1] + users * (y_bar - ref_y) ** 2
    sxy = scatter[:, 0, 1] + users * (x_bar - ref_x) * (y_bar - ref_y)
    n = np.full(sims, float(users))
    return np.stack([n, users * y_bar, syy, users * x_bar, sxx, sxy, np.full(sims, ref_y), np.full(sims, ref_x)])


def _rate_day(rng, sims: int, users: int, base: float, effect: float) -> np.ndarray:
    p = base * (1 + effect)
    p1 = min(0.9, 4 * base)                     # P(Y=1 | X=1) before the effect
    p0 = max(0.0, (base - base * p1) / (1 - base))
    scale = p / base
    nx = rng.binomial(users, base, sims)
    y1 = rng.binomial(nx, min(1.0, p1 * scale))
    y0 = rng.binomial(users - nx, min(1.0, p0 * scale))
    sy = (y1 + y0).astype(float)
    z = np.zeros(sims)
    return np.stack([np.full(sims, float(users)), sy, sy, nx.astype(float), nx.astype(float), y1.astype(float), z, z])


def _ratio_day(rng, sims: int, users: int, base: float, effect: float) -> np.ndarray:
    p = min(0.99, base * (1 + effect))
    d = 1.0 + rng.poisson(9.0, (sims, users))
    rate = rng.beta(20 * p, 20 * (1 - p), (sims, users))
    m = rng.binomial(d.astype(np.int64), rate).astype(float)
    z = np.zeros(sims)
    # RatioStats field order: n, Σm, Σd, Σm², Σd², Σmd, ref_m, ref_d
    return np.stack([np.full(sims, float(users)), m.sum(1), d.sum(1), (m * m).sum(1), (d * d).sum(1),
                     (m * d).sum(1), z, z])


def daily_sums(rng, metric: MetricType, sims: int, users: int, base: float, effect: float) -> np.ndarray:
    """(8, sims) per-arm sums of one day's new users (fields in SufficientStats/RatioStats order)."""
    if metric == "mean":
        return normal_day(rng, sims, users, 5.0 * (1 + effect), sd=2.0, ref_y=5.0)
    if metric == "rate":
        return _rate_day(rng, sims, users, base, effect)
    if metric == "ratio":
        return _ratio_day(rng, sims, users, base, effect)
    raise ValueError(f"metric must be mean, rate or ratio, got {metric!r}")


# ------------------------------------------------------------------------------ through decide() --

def _policy(cell: Cell) -> DecisionPolicy:
    guard = (Guardrail("guard", margin=0.10, relative=True, higher_is_better=False, cuped=True),) \
        if cell.guardrails else ()
    return DecisionPolicy(Metric("y", higher_is_better=True, relative=cell.relative, cuped=cell.cuped),
                          planned_users_per_arm=max(1, round(cell.plan * cell.users * cell.looks)), min_users_per_arm=0,
                          max_days=cell.looks, alpha=cell.alpha, guardrails=guard, sequential=cell.sequential,
                          horizon=cell.horizon)


def _cumulate(daily: np.ndarray) -> np.ndarray:
    """Cumulative sums over days (axis 0) of (…, 8, sims) field arrays; the last two fields are the
    references, fixed per metric, which are carried, not added."""
    cum = np.cumsum(daily, axis=0)
    cum[:, :, 6:] = daily[:1, :, 6:]
    return cum


def simulate(cell: Cell, sims: int, seed: int = 0) -> dict:
    """Run ``sims`` experiments of ``cell`` through decide(); rates of each final outcome."""
    rng = np.random.default_rng(seed)
    kind = RatioStats if cell.metric == "ratio" else SufficientStats
    days = []
    users = cell.users // cell.per_day           # per tick
    for _ in range(cell.looks * cell.per_day):
        arms = [daily_sums(rng, cell.metric, sims, users, cell.base, e) for e in (0.0, cell.effect)]
        guard = [daily_sums(rng, "rate", sims, users, 0.05, 0.0) for _ in (0, 1)] if cell.guardrails else None
        days.append((arms, guard))
    cum = _cumulate(np.stack([np.stack(a) for a, _ in days]))                  # (ticks, 2, 8, sims)
    gcum = _cumulate(np.stack([np.stack(g) for _, g in days])) if cell.guardrails else None
    policy = _policy(cell)
    ticks = cell.look_ticks()
    outcome = np.zeros(sims, dtype="<U12")
    stop = np.full(sims, float(cell.looks))
    for i in range(sims):
        state = None
        outcome[i] = "inconclusive"
        for tick in ticks:
            stats = {arm: {"y": kind(*cum[tick - 1, k, :, i])} for k, arm in enumerate(("c", "t"))}
            if gcum is not None:
                for k, arm in enumerate(("c", "t")):
                    stats[arm]["guard"] = SufficientStats(*gcum[tick - 1, k, :, i])
            d = decide(policy, control="c", weights={"c": 0.5, "t": 0.5}, stats=stats,
                       elapsed_days=tick / cell.per_day, state=state)
            state = d.state
            if d.outcome != "continue":   # promote, rollback, or the group design's end (inconclusive)
                outcome[i], stop[i] = d.outcome, tick / cell.per_day
                break
    promote, rollback = float(np.mean(outcome == "promote")), float(np.mean(outcome == "rollback"))
    return {**asdict(cell), "sims": sims, "promote": promote, "rollback": rollback,
            "se": math.sqrt(cell.alpha * (1 - cell.alpha) / sims), "mean_stop_day": float(stop.mean())}


def false_rates(result: dict) -> tuple[float, float]:
    """(false promotion rate, false rollback rate) of one ``simulate`` result: under no effect both
    outcomes are false; under harm only a promotion is, under benefit only a rollback."""
    eff = result["effect"]
    return (result["promote"] if eff <= 0 else 0.0, result["rollback"] if eff >= 0 else 0.0)


# ------------------------------------------------------------------------------ maturing metric ---

def simulate_maturing(sims: int, seed: int = 0, users: int = 400, days: int = 14, first_day: float = 0.95,
                      user_sd: float = 0.1, day_sd: float = 3.0, alpha: float = 0.05, ar: float = 0.0,
                      boundary_rule: str | None = None) -> dict:
    """A/A experiments on a metric that matures: each user's Y is the mean of their daily values since
    their first exposure (watch minutes per day, as the collector publishes it), daily value = 5 + u + e
    (u ~ N(0, user_sd²) per user, e ~ N(0, day_sd²) per day, AR(1) across a user's days with coefficient
    ``ar``: habits that fade), covariate X = u + N(0, user_sd²); ``first_day`` of the users arrive on day 1,
    the rest evenly over the later days. Information keeps growing after the users stop arriving, so only a
    clock in the estimate's own information gives the design its α; with ``ar`` > 0 or late users the looks'
    correlation is also below the √(I_j/I_k) that exact boundaries assume. Looked at daily through decide()
    with a group design that ends at the last day (horizon "days", the Rollout without plannedSamplePerArm;
    ``boundary_rule`` None: its own rule) and no futility stop (which would cut the falling half: both
    directions count); returns the promote and rollback rates and the bound α + 2 s.e. on their sum."""
    rng = np.random.default_rng(seed)
    late = users - round(first_day * users)
    per_day = np.diff(np.round(np.linspace(0, late, days)).astype(int))
    first = np.repeat(np.arange(days), [users - late, *per_day])          # each user's first day, per arm
    policy = DecisionPolicy(Metric("y"), planned_users_per_arm=users, min_users_per_arm=0, max_days=days,
                            alpha=alpha, horizon="days", futility=None, boundary_rule=boundary_rule)
    cols = np.arange(days)
    out = {"promote": 0, "rollback": 0}
    for _ in range(sims):
        u = user_sd * rng.standard_normal((2, users))
        x = u + user_sd * rng.standard_normal((2, users))
        e = rng.standard_normal((2, users, days))
        for k in range(1, days):
            e[..., k] = ar * e[..., k - 1] + math.sqrt(1 - ar * ar) * e[..., k]
        total = np.cumsum(5 + u[..., None] + day_sd * e, axis=2)
        before = np.where(first > 0, np.take_along_axis(total, np.maximum(first - 1, 0)[None, :, None], 2)[..., 0], 0)
        state = None
        for k in cols:
            seen = first <= k
            y = (total[..., k] - before) / np.maximum(1, k - first + 1)
            stats = {arm: {"y": SufficientStats.from_arrays(y[j, seen], x[j, seen], ref_y=5.0, ref_x=0.0)}
                     for j, arm in enumerate(("c", "t"))}
            d = decide(policy, control="c", weights={"c": 0.5, "t": 0.5}, stats=stats, elapsed_days=k + 1,
                       state=state)
            state = d.state
            if d.outcome != "continue":
                break
        if d.outcome in out:
            out[d.outcome] += 1
    return {"sims": sims, "promote": out["promote"] / sims, "rollback": out["rollback"] / sims,
            "bound": alpha + 2 * math.sqrt(alpha * (1 - alpha) / sims)}


# ------------------------------------------------------------------------------ grids -------------

def fast_grid() -> list[Cell]:
    """The default-suite grid: every metric type, scale, CUPED and guardrail setting at least once,
    base rates 0.001-0.5, 20-5000 users per arm per day, 1-28 looks, A/A plus one harmful and one
    beneficial A/B cell (only the wrong-direction decision is false there)."""
    return [
        Cell("mean", 1.0, 200, 14, relative=True, cuped=True),
        Cell("mean", 1.0, 20, 28, relative=False, cuped=False, guardrails=True),
        Cell("mean", 1.0, 1000, 1, relative=True, cuped=False),
        Cell("rate", 0.5, 5000, 7, relative=True, cuped=True),
        Cell("rate", 0.001, 5000, 14, relative=True, cuped=False, guardrails=True),
        Cell("rate", 0.05, 20, 28, relative=False, cuped=True),
        Cell("ratio", 0.1, 200, 14, relative=True),
        Cell("ratio", 0.01, 50, 7, relative=False, guardrails=True),
        Cell("mean", 1.0, 200, 14, relative=True, cuped=True, effect=-0.04),
        Cell("rate", 0.1, 500, 14, relative=True, cuped=True, effect=+0.2),
        Cell("mean", 1.0, 200, 14, relative=True, cuped=True, sequential="msprt"),
        Cell("rate", 0.01, 50, 14, relative=True, cuped=True, guardrails=True, sequential="msprt"),
        *off_plan_cells()[:2],
    ]


def off_plan_cells(metric: MetricType = "mean", base: float = 1.0, users: int = 240) -> list[Cell]:
    """The group design when the looks are not the planned ones: a users horizon reached at half time
    (its final look comes early), traffic at half of it (the last day spends what is left), three
    looks a day (extra looks), a look every third day (missed looks)."""
    return [Cell(metric, base, users, 14, plan=0.5, horizon="users"), Cell(metric, base, users, 14, plan=2.0, horizon="users"),
            Cell(metric, base, users, 14, per_day=3), Cell(metric, base, users, 14, every=3)]


def slow_grid() -> list[Cell]:
    """The full grid: metric × base × users × looks, with scale, CUPED and guardrails cycled over the
    cells (a balanced fraction of the factorial), plus harmful and beneficial A/B cells, all with the
    default group-sequential design; then the mSPRT on five cells and the group design off its plan."""
    cells = []
    bases = {"mean": (1.0,), "rate": (0.001, 0.01, 0.1, 0.5), "ratio": (0.01, 0.1)}
    i = 0
    for metric, bs in bases.items():
        for base in bs:
            for users in (20, 500, 5000):
                for looks in (1, 7, 28):
                    cells.append(Cell(metric, base, users, looks, relative=i % 2 == 0, cuped=(i // 2) % 2 == 0,
                                      guardrails=(i // 4) % 2 == 0))
                    i += 1
    for metric, base in (("mean", 1.0), ("rate", 0.05), ("ratio", 0.1)):
        for effect in (-0.05, +0.05):
            cells.append(Cell(metric, base, 500, 14, relative=True, cuped=True, guardrails=True, effect=effect))
    for metric, base, users, looks in (("mean", 1.0, 20, 28), ("mean", 1.0, 5000, 7), ("rate", 0.01, 500, 28),
                                       ("rate", 0.001, 5000, 14), ("ratio", 0.1, 500, 14)):
        cells.append(Cell(metric, base, users, looks, relative=True, cuped=True, sequential="msprt"))
    return cells + off_plan_cells() + off_plan_cells("rate", 0.01, 600)


def run_grid(cells: list[Cell], sims: int, seed: int = 0, offset: int = 0, on_row=None) -> list[dict]:
    """``simulate`` every cell (seeded by its position in the grid, ``offset`` + index, so a grid run in
    slices gives the same rows) and add the false rates and their bound; ``on_row(rows)`` after each."""
    rows = []
    for k, cell in enumerate(cells):
        r = simulate(cell, sims, seed=seed + offset + k)
        fp, fr = false_rates(r)
        rows.append({**r, "false_promote": fp, "false_rollback": fr,
                     "bound": cell.alpha + 2 * r["se"], "ok": fp <= cell.alpha + 2 * r["se"] >= fr})
        if on_row:
            on_row(rows)
    return rows


def reduced_grid() -> list[Cell]:
    """A third of the slow grid for a busy machine: a third of the factorial cells (each metric, base
    rate, users, looks, scale, CUPED and guardrail level still appears), one harmful and one
    beneficial A/B cell, and the group design off its plan on a continuous metric."""
    slow = slow_grid()
    factorial = [c for c in slow if c.effect == 0 and c.sequential == "group" and
                 (c.plan, c.per_day, c.every) == (1.0, 1, 1)]
    ab = [c for c in slow if c.effect != 0 and c.metric == "rate"]
    # a Latin square per metric and base rate: each users level meets each looks level once
    third = [c for i, c in enumerate(factorial) if (i % 3 + i // 3 % 3 + i // 9) % 3 == 0]
    return third + ab + off_plan_cells()


def _test_label(r: dict) -> str:
    off = [f"ends at plan ×{r['plan']:g} users" if r.get("horizon") == "users" else
           f"plan ×{r['plan']:g}" if r.get("plan", 1.0) != 1.0 else "",
           f"{r['per_day']} looks/day" if r.get("per_day", 1) != 1 else "",
           f"a look every {r['every']} days" if r.get("every", 1) != 1 else ""]
    return ", ".join([r.get("sequential", "msprt"), *[o for o in off if o]])


def markdown_table(rows: list[dict]) -> str:
    """The grid's results as a Markdown table (bench/README.md's "Calibration grid")."""
    head = ("| metric | base | users/arm/day | looks | scale | CUPED | guardrails | test | true effect "
            "| false promotions | false rollbacks | bound (α + 2 s.e.) | pass |\n|" + "---|" * 13)
    lines = [head]
    for r in rows:
        base = "–" if r["metric"] == "mean" else f"{r['base']:g}"
        lines.append(
            f"| {r['metric']} | {base} | {r['users']} | {r['looks']} | {'relative' if r['relative'] else 'absolute'} "
            f"| {'on' if r['cuped'] and r['metric'] != 'ratio' else 'off'} | {'on' if r['guardrails'] else 'off'} "
            f"| {_test_label(r)} | {r['effect']:+g} "
            f"| {r['false_promote']:.1%} | {r['false_rollback']:.1%} | {r['bound']:.1%} | {'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m cambrian.stats.calibration [--sims N] [--out FILE]`: the slow grid as JSON rows."""
    import argparse
    import json
    import time

    ap = argparse.ArgumentParser(prog="python -m cambrian.stats.calibration")
    ap.add_argument("--sims", type=int, default=500)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--out", default="-")
    ap.add_argument("--grid", choices=("slow", "reduced", "fast"), default="slow")
    ap.add_argument("--cells", default=":", help="START:STOP, a slice of the grid (for runs split across processes)")
    a = ap.parse_args(argv)
    if a.sims < 10:
        ap.error("--sims must be at least 10")
    try:
        start, stop = (int(x) if x else None for x in a.cells.split(":"))
    except ValueError:
        ap.error(f"--cells must be START:STOP, got {a.cells!r}")
    t0 = time.perf_counter()
    grid = {"slow": slow_grid, "reduced": reduced_grid, "fast": fast_grid}[a.grid]()
    part = grid[start:stop]

    def document(rows: list[dict]) -> dict:
        return {"command": f"python -m cambrian.stats.calibration --grid {a.grid} --sims {a.sims} --seed {a.seed}"
                           + (f" --cells {a.cells}" if a.cells != ":" else ""),
                "sims_per_cell": a.sims, "cells": len(rows), "cells_planned": len(part),
                "all_ok": all(r["ok"] for r in rows), "seconds": time.perf_counter() - t0, "rows": rows}

    def write(rows: list[dict]) -> None:   # after every cell: a run cut short keeps what it measured
        if a.out != "-":
            with open(a.out, "w") as f:
                f.write(json.dumps(document(rows), indent=1) + "\n")

    rows = run_grid(part, a.sims, a.seed, offset=range(len(grid))[start:stop].start, on_row=write)
    doc = document(rows)
    if a.out == "-":
        print(json.dumps(doc, indent=1))
    return 0 if doc["all_ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
