import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sst

from cambrian.stats import (Guardrail, HardLimit, adjust, benjamini_hochberg, bonferroni,
                                          hard_limit_breaches, holm, non_inferiority, srm_check)


def test_srm_reference_example():
    r = srm_check({"control": 50_600, "treatment": 49_400}, {"control": 50, "treatment": 50})
    assert r.p_value == pytest.approx(1.5e-4, rel=0.02) and r.statistic == pytest.approx(14.4)
    assert r.mismatch and r.reason.startswith("SRM")


def test_srm_balanced_and_unequal_designs():
    assert not srm_check({"c": 50_100, "t": 49_900}, {"c": 0.5, "t": 0.5}).mismatch
    assert not srm_check({"c": 9_000, "t1": 500, "t2": 500}, {"c": 0.9, "t1": 0.05, "t2": 0.05}).mismatch
    assert srm_check({"c": 9_000, "t1": 700, "t2": 300}, {"c": 0.9, "t1": 0.05, "t2": 0.05}).mismatch
    assert not srm_check({"c": 0, "t": 0}, {"c": 1, "t": 1}).mismatch
    assert srm_check({"c": 100, "t": 3}, {"c": 1, "t": 0}).mismatch   # users in a switched-off arm


@pytest.mark.parametrize("obs, w, field", [
    ({"c": 1}, {"c": 1, "t": 1}, "observed arms"), ({"c": 1, "t": 1}, {"c": -1, "t": 1}, "weights"),
    ({"c": -1, "t": 1}, {"c": 1, "t": 1}, "observed"), ({"c": 1, "t": 1}, {"c": 0, "t": 0}, "weights"),
])
def test_srm_bad_input(obs, w, field):
    with pytest.raises(ValueError, match=field):
        srm_check(obs, w)


def test_adjustments_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert bonferroni(p) == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert benjamini_hochberg(p) == pytest.approx(list(sst.false_discovery_control(p)))
    assert adjust([], "holm") == []
    with pytest.raises(ValueError, match="correction"):
        adjust(p, "sidak")
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_adjustment_properties(p):
    h, b, q = holm(p), bonferroni(p), benjamini_hochberg(p)
    assert np.allclose(q, sst.false_discovery_control(p))
    for raw, hh, bb, qq in zip(p, h, b, q):
        assert raw <= qq + 1e-12 and qq <= hh + 1e-12 and hh <= bb + 1e-12 and bb <= 1


@pytest.mark.parametrize("higher, lo, hi, status", [
    (True, -0.005, 0.02, "pass"), (True, -0.03, 0.01, "pending"), (True, -0.05, -0.02, "fail"),
    (False, -0.02, 0.005, "pass"), (False, -0.01, 0.03, "pending"), (False, 0.02, 0.05, "fail"),
])
def test_non_inferiority(higher, lo, hi, status):
    g = Guardrail("hate_rate" if not higher else "dau", margin=0.01, relative=True, higher_is_better=higher)
    r = non_inferiority("t", g, (lo + hi) / 2, lo, hi)
    assert r.status == status and r.arm == "t" and g.metric in r.reason
    assert r.bound == (-0.01 if higher else 0.01)


def test_hard_limits_name_arm_and_why():
    limits = [HardLimit("latency_p99_ms", max=250), HardLimit("error_rate", max=0.01), HardLimit("ctr", min=0.02)]
    values = {"t1": {"latency_p99_ms": 310.0, "error_rate": 0.001, "ctr": 0.05},
              "t2": {"latency_p99_ms": 120.0, "error_rate": 0.02, "ctr": 0.01},
              "t3": {"latency_p99_ms": 100.0, "ctr": math.nan}}
    breaches, missing = hard_limit_breaches(limits, values, ["t1", "t2", "t3"])
    got = {(b.arm, b.metric, b.kind) for b in breaches}
    assert got == {("t1", "latency_p99_ms", "max"), ("t2", "error_rate", "max"), ("t2", "ctr", "min")}
    assert "latency_p99_ms on t1 is 310, above the max 250" in breaches[0].reason
    assert missing == ["t3/error_rate", "t3/ctr"]


def test_guardrail_and_limit_validation():
    with pytest.raises(ValueError, match="margin"):
        Guardrail("x", margin=-0.1)
    with pytest.raises(ValueError, match="set max, min"):
        HardLimit("latency")
    with pytest.raises(ValueError, match="metric"):
        HardLimit("", max=1)
