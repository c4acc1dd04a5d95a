import time

from cambrian.bench import decision


def test_quick_bench_meets_targets_fast():
    t0 = time.perf_counter()
    r = decision.run(quick=True)
    assert time.perf_counter() - t0 < 30
    assert {"name", "ratio", "ratio_meaning", "command"} <= set(r)
    assert r["name"] == "decision" and r["command"] == "cambrian bench run decision --quick"
    # FPR with daily looks within alpha + 2 SE; naive peeking far above; fixed single look near alpha
    assert r["fpr_sequential_cuped_daily_looks"] <= r["alpha"] + 2 * r["fpr_standard_error"]
    assert r["fpr_naive_peeking_daily"] > 0.15
    assert abs(r["fpr_fixed_horizon_single_look"] - r["alpha"]) < 4 * r["fpr_standard_error"]
    # equal power, at least 30% fewer users; decide() agrees with the vectorised kernels
    assert r["sequential_power_at_truncation"] >= r["fixed_horizon_power"]
    assert r["ratio"] <= 0.7
    ok, total = map(int, r["decide_agreement"].split("/"))
    assert ok == total > 0
