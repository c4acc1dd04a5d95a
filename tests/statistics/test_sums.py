import json
import math

import numpy as np
import pytest

from cambrian.stats import RatioStats, SufficientStats


def test_moments_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(5, 2, 500)
    y = 3 * x + rng.normal(0, 1, 500)
    s = SufficientStats.from_arrays(y, x)
    assert s.n == 500
    assert s.mean_y == pytest.approx(y.mean())
    assert s.mean_x == pytest.approx(x.mean())
    assert s.var_y == pytest.approx(y.var(ddof=1))
    assert s.var_x == pytest.approx(x.var(ddof=1))
    assert s.cov_xy == pytest.approx(np.cov(x, y)[0, 1])


def test_merge_equals_concatenation():
    rng = np.random.default_rng(4)
    y1, x1, y2, x2 = rng.normal(size=(4, 300))
    merged = SufficientStats.from_arrays(y1, x1).merge(SufficientStats.from_arrays(y2 + 3, x2))
    whole = SufficientStats.from_arrays(np.r_[y1, y2 + 3], np.r_[x1, x2])
    assert merged.n == whole.n and merged.ref_y == SufficientStats.from_arrays(y1, x1).ref_y
    for k in ("sum_y", "sum_x", "mean_y", "var_y", "var_x", "cov_xy"):
        assert getattr(merged, k) == pytest.approx(getattr(whole, k))
    # With shared references the sums themselves add (what PromQL's sum() does across series).
    shared = dict(ref_y=1.5, ref_x=0.0)
    added = SufficientStats.from_arrays(y1, x1, **shared) + SufficientStats.from_arrays(y2 + 3, x2, **shared)
    for k, v in SufficientStats.from_arrays(np.r_[y1, y2 + 3], np.r_[x1, x2], **shared).to_dict().items():
        assert getattr(added, k) == pytest.approx(v)
    assert (SufficientStats() + whole) == whole


def test_moments_stable_when_spread_is_tiny_next_to_the_mean():
    """Defect 4: raw Σy² − (Σy)²/n cancels to 0 at mean 1e6, sd 1, n 1e6; shifted sums keep it."""
    rng = np.random.default_rng(12)
    y = 1e6 + rng.standard_normal(1_000_000)
    x = 1e6 + 0.5 * (y - 1e6) + rng.standard_normal(y.size)
    s = SufficientStats.from_arrays(y, x)
    assert s.var_y == pytest.approx(y.var(ddof=1), rel=1e-6)
    assert s.cov_xy == pytest.approx(np.cov(x, y)[0, 1], rel=1e-6)
    halves = SufficientStats.from_arrays(y[:500_000], x[:500_000]) + SufficientStats.from_arrays(y[500_000:], x[500_000:])
    assert halves.var_y == pytest.approx(y.var(ddof=1), rel=1e-6)
    d = rng.poisson(1e6, 200_000).astype(float)
    r = RatioStats.from_arrays(d + rng.standard_normal(d.size), d)
    assert r.var_d == pytest.approx(d.var(ddof=1), rel=1e-6)
    # The old contract (references 0) is what a raw-sum exporter sends: it reads the same way.
    raw = SufficientStats(n=3, sum_y=6.0, sum_y2=14.0)
    assert raw.var_y == pytest.approx(1.0) and raw.rebased(2.0, 0.0).sum_y2 == pytest.approx(2.0)


def test_no_covariate_means_zero_x():
    s = SufficientStats.from_arrays([1.0, 2.0, 3.0])
    assert (s.sum_x, s.sum_x2, s.sum_xy, s.var_x, s.cov_xy) == (0, 0, 0, 0, 0)


def test_ratio_moments_match_numpy():
    rng = np.random.default_rng(5)
    d = rng.poisson(20, 400).astype(float)
    m = rng.binomial(d.astype(int), 0.1).astype(float)
    r = RatioStats.from_arrays(m, d)
    assert r.mean_m == pytest.approx(m.mean()) and r.mean_d == pytest.approx(d.mean())
    assert r.var_m == pytest.approx(m.var(ddof=1)) and r.var_d == pytest.approx(d.var(ddof=1))
    assert r.cov_md == pytest.approx(np.cov(m, d)[0, 1])
    assert r.merge(RatioStats()) == r


def test_roundtrip_and_prometheus_floats():
    s = SufficientStats.from_arrays([1.0, 2.0], [0.5, 0.1])
    assert SufficientStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # Prometheus gauges come back as floats: a whole float n is accepted.
    assert SufficientStats(n=2.0, sum_y=3.0, sum_y2=5.0).n == 2


def test_degenerate_moments_are_zero_not_nan():
    for s in (SufficientStats(), SufficientStats.from_arrays([7.0]), SufficientStats.from_arrays([1e9] * 5)):
        for v in (s.mean_y, s.var_y, s.var_x, s.cov_xy):
            assert math.isfinite(v)
    assert SufficientStats.from_arrays([1e9] * 5).var_y == 0.0


@pytest.mark.parametrize("kwargs, field", [
    ({"n": -1}, "n"), ({"n": 1.5}, "n"), ({"n": 2, "sum_y": math.nan}, "sum_y"),
    ({"n": 2, "sum_y2": -1.0}, "sum_y2"), ({"n": 0, "sum_y": 1.0}, "sum_y"),
    ({"n": 2, "sum_xy": "abc"}, "sum_xy"), ({"n": True}, "n"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SufficientStats(**kwargs)


def test_bad_input_other_paths():
    with pytest.raises(ValueError, match="unknown"):
        SufficientStats.from_dict({"n": 1, "sum_z": 2})
    with pytest.raises(ValueError, match="x has"):
        SufficientStats.from_arrays([1, 2], [1])
    with pytest.raises(TypeError):
        SufficientStats().merge(RatioStats())
    with pytest.raises(ValueError, match="sum_d2"):
        RatioStats(n=1, sum_d2=-2)
