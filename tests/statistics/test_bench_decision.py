from cambrian.bench import decision


def test_quick_bench_is_fair_and_meets_targets():
    r = decision.run(quick=True)
    assert r["cpu_seconds"] < 60
    assert {"name", "ratio", "ratio_meaning", "command"} <= set(r)
    assert r["name"] == "decision" and r["command"] == "cambrian bench run decision --quick"
    m = r["methods"]
    # every sequential method is compared with the fixed test with the same variance reduction, at
    # equal power at the design effect
    for name, meth in m.items():
        if not name.startswith("fixed"):
            tag = "no_cuped" if name.endswith("no_cuped") else "cuped"
            assert meth["power"] >= m[f"fixed_{tag}"]["power"] - 0.03, name
    assert "same CUPED" in r["ratio_meaning"]
    c = r["components"]
    assert 0.45 < c["cuped_alone"] < 0.55                      # 1 − ρ² = 0.51
    assert c["sequential_given_cuped"] == r["ratio"]
    assert c["msprt_given_cuped"] > 1.0                         # the old method alone does not save users
    # targets: group-sequential with futility ≤ 0.8× fixed + CUPED, harmful arms cut ≥ 2× sooner
    assert r["ratio"] <= 0.8 and r["harmful_cut_speedup"] >= 2.0
    se = r["fpr_standard_error"]
    for k, v in r["false_decision_rate_aa"].items():
        if not k.startswith("naive"):
            assert v <= r["alpha"] + 2 * se, k
    assert r["false_decision_rate_aa"]["naive_peeking_daily_cuped"] > 0.15
    ok, total = map(int, r["decide_agreement"].split("/"))
    assert ok == total > 0
