"""A/A and A/B calibration through decide() itself (stats/calibration.py): in every cell, false
promotions and false rollbacks are each at most α plus two simulation standard errors.

The default grid (12 cells × 200 experiments) covers every metric type, scale, CUPED and guardrail
setting; the slow grid (74 cells × 500 experiments) is the one whose results the README tables."""

import pytest

from cambrian.stats.calibration import fast_grid, run_grid, slow_grid


def _check(rows):
    bad = [f"{r['metric']} base={r['base']} users={r['users']} looks={r['looks']} rel={r['relative']} "
           f"cuped={r['cuped']} guard={r['guardrails']} effect={r['effect']}: false promote {r['false_promote']:.3f}, "
           f"false rollback {r['false_rollback']:.3f} > {r['bound']:.3f}" for r in rows if not r["ok"]]
    assert not bad, "\n".join(bad)


def test_fast_grid_is_calibrated():
    rows = run_grid(fast_grid(), sims=200, seed=1000)
    _check(rows)
    # the grid is not vacuous: the beneficial A/B cell is promoted most of the time
    assert max(r["promote"] for r in rows if r["effect"] > 0) > 0.5


@pytest.mark.slow
def test_slow_grid_is_calibrated():
    _check(run_grid(slow_grid(), sims=500, seed=2000))
