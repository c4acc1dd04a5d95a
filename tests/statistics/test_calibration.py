"""A/A and A/B calibration through decide() itself (stats/calibration.py): in every cell, false
promotions and false rollbacks are each at most α plus two simulation standard errors.

The default grid (14 cells × 200 experiments) covers every metric type, scale, CUPED and guardrail
setting with the default group-sequential design (two cells off its plan) and two mSPRT cells; the
slow grid (82 cells) is the one whose results bench/README.md's "Calibration grid" tables."""

import pytest

from cambrian.stats.calibration import fast_grid, run_grid, slow_grid


def _check(rows):
    bad = [f"{r['metric']} base={r['base']} users={r['users']} looks={r['looks']} rel={r['relative']} "
           f"cuped={r['cuped']} guard={r['guardrails']} effect={r['effect']}: false promote {r['false_promote']:.3f}, "
           f"false rollback {r['false_rollback']:.3f} > {r['bound']:.3f}" for r in rows if not r["ok"]]
    assert not bad, "\n".join(bad)


@pytest.mark.timeout(1800)   # each look's boundary is computed afresh: its information (1/variance) differs
def test_fast_grid_is_calibrated():  # per simulation, so no cache hits (≈ 5× the CPU of the users clock's)
    rows = run_grid(fast_grid(), sims=200, seed=1000)
    _check(rows)
    # the grid is not vacuous: a beneficial arm is mostly promoted; a harmful one is never promoted
    # and stopped early (the default group design cuts it for futility: inconclusive, traffic back)
    assert max(r["promote"] for r in rows if r["effect"] > 0) > 0.5
    harmful = [r for r in rows if r["effect"] < 0]
    assert harmful and all(r["promote"] == 0 and r["mean_stop_day"] < r["looks"] / 2 for r in harmful)
    # every cell of the grid runs the default design unless it names another
    assert {r["sequential"] for r in rows} == {"group", "msprt"}


@pytest.mark.parametrize("metric", ["mean", "rate", "ratio"])
@pytest.mark.parametrize("sequential", ["msprt", "group"])
def test_every_metric_type_reaches_decisions(metric, sequential):
    """Power check of the simulator and decide() together: a clear lift is promoted."""
    from cambrian.stats.calibration import Cell, simulate
    r = simulate(Cell(metric, 0.2, 500, 7, effect=0.15, sequential=sequential), sims=40, seed=5)
    assert r["promote"] > 0.8 and r["rollback"] == 0


@pytest.mark.slow
@pytest.mark.timeout(14400)   # 82 cells × 500 experiments: ≈ 40 min of one core (× 200 took 918 s)
def test_slow_grid_is_calibrated():
    """Every cell of bench/README.md's "Calibration grid", with the default group-sequential design (mSPRT on five cells)."""
    cells = slow_grid()
    assert sum(c.sequential == "group" for c in cells) >= len(cells) - 5
    _check(run_grid(cells, sims=500, seed=2000))


def test_reduced_grid_keeps_every_level_of_the_slow_grid():
    """The grid a busy machine runs (bench/README.md's "Calibration grid") still meets every level the README claims."""
    from cambrian.stats.calibration import reduced_grid
    slow, reduced = slow_grid(), reduced_grid()
    assert len(reduced) < len(slow) / 2 and all(c.sequential == "group" for c in reduced)
    for f in ("metric", "base", "users", "looks", "relative", "cuped", "guardrails"):
        want = {getattr(c, f) for c in slow if c.sequential == "group" and c.effect == 0
                and (c.plan, c.per_day, c.every) == (1.0, 1, 1)}
        assert want <= {getattr(c, f) for c in reduced}, f
    assert {c.effect > 0 for c in reduced if c.effect} == {True, False}
