"""Each benchmark's quick mode end to end: real trainer, real offline loop, real servers (slow: minutes)."""

import json
import math

import pytest

pytestmark = pytest.mark.slow


def _well_formed(r: dict, name: str) -> None:
    assert r["name"] == name and r["quick"] is True
    assert r["command"] == f"cambrian bench run {name} --quick"
    assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]) and r["ratio_meaning"]
    json.dumps(r)  # serialisable as written to bench/results


@pytest.mark.timeout(900)
def test_search_on_held_out_seeds():
    """`--seeds 5,6,...`: paired seeds other than the size's. Φ0's online reference is the first seed's TPE
    evaluation 1, whichever seed that is (it was read from seed 0's folder, so held-out seeds lost the whole run
    at its end)."""
    from cambrian.bench import search

    r = search.run_variant("search", {**search.QUICK, "budget": 3}, quick=True, wide=False, arms=("tpe", "builtin"),
                           seeds=(2,))
    assert r["seeds"] == [2] and r["command"] == "cambrian bench run search --quick --seeds 2"
    assert r["per_seed"][0]["seed"] == 2 and r["per_seed"][0]["train_seed"] == 2000
    assert r["online_baseline_phi0"] is not None and r["online_baseline_phi0"]["minutes_per_user_day"] > 0


@pytest.mark.timeout(2400)  # four arms x two seeds of real training: ~10 min on a busy 2-core machine
def test_search_quick():
    from cambrian.bench import search

    r = search.run(quick=True)
    _well_formed(r, "search")
    budget, seeds = r["budget_evaluations"], r["seeds"]
    assert len(seeds) == 2
    for arm in search.ARMS:
        assert len(r["evals_to_tpe_best"][arm]) == len(seeds)
        assert all(1 <= e <= budget + 1 for e in r["evals_to_tpe_best"][arm])
        assert len(r["mean_best_curve"][arm]) == budget
    # TPE reaches its own final best within the budget, so its count is never censored
    assert not any(r["censored"]["tpe"]) and r["ratio_to_tpe"]["tpe"] == 1.0
    assert set(r.get("online_winner_minus_tpe_winner", {})) <= set(search.ARMS)
    for seed in r["per_seed"]:
        for arm in ("random", "tpe", "builtin"):  # the budget binds these arms exactly
            a = seed["arms"][arm]
            assert a["evaluations_used"] == budget, (arm, a)
            curve = [v for v in a["best_curve"] if v is not None]
            counted = [v for v, kind in zip(a["values"], a["kinds"]) if v is not None and kind != "noise seed"]
            assert curve == sorted(curve) and max(curve) == max(counted)
        assert seed["arms"]["llm"]["evaluations_used"] <= budget
        for arm in ("builtin", "llm"):  # the loop judged every change by the metric the arms are compared on
            assert set(seed["arms"][arm]["offline_objective"].values()) == {f"{search.METRIC} maximize"}, arm
        # Φ0 is evaluation 1 of both numeric arms with the same seed: the same trainer gives the same value
        assert seed["arms"]["random"]["values"][0] == seed["arms"]["tpe"]["values"][0]
        for arm in search.ARMS:
            online = seed["arms"][arm]["online"]
            assert online is not None and 0 < online["dau_frac"] <= 1 and online["minutes_per_user_day"] > 0


@pytest.mark.timeout(1200)  # 3 + 3 runs of real training on a tiny world: ~2-4 min on a busy 2-core machine
def test_search_plugin_tiny_reports_the_fields():
    """The harder search benchmark at a tiny size through the same function as `search-plugin --quick`."""
    from cambrian.bench import search_plugin
    from cambrian.bench.search import WRITTEN, run_variant

    size = {"seeds": [0], "budget": 3, "users": 40, "days": 2, "epochs": 1, "max_epochs": 1, "online_days": 1}
    r = run_variant("search-plugin", size, quick=True, wide=True, arms=search_plugin.QUICK_ARMS)
    _well_formed(r, "search-plugin")
    assert r["arms"] == ["tpe", "builtin"] and "architecture" in r["numeric_space"]
    for key in ("evals_to_tpe_best", "ratio_to_tpe", "median_seed_ratio_to_tpe", "seeds_above_tpe_final_best"):
        assert set(r[key]) == {"tpe", "builtin"}, key
    assert set(r["targets_met"]) == {"builtin/tpe<=0.5", "median seed ratio<=0.5",
                                     "above TPE's final best in >=4 of 5 seeds"}
    seed = r["per_seed"][0]
    tpe, loop = seed["arms"]["tpe"], seed["arms"]["builtin"]
    assert tpe["evaluations_used"] == loop["evaluations_used"] == 3  # the budget binds both arms
    # the numeric arm's evaluation 1 is Φ0, the loop's Φ0 (the same run) then its noise-floor seed; then changes
    assert tpe["kinds"][0] == "baseline" and set(tpe["kinds"][1:]) <= {"setting"}
    assert loop["kinds"][:2] == ["baseline", "noise seed"] and loop["kinds"][2] in ("setting", *WRITTEN)
    assert loop["values"][0] == tpe["values"][0]  # Φ0's own seed: the same trainer gives the same value
    assert r["seeds_best_is_written"] == int(seed["best_is_written"])
    assert 0 <= r["seeds_above_tpe_final_best"]["builtin"] <= 1 and r["seeds_above_tpe_final_best"]["tpe"] == 0


@pytest.mark.timeout(1800)
def test_throughput_quick():
    from cambrian.bench import throughput

    r = throughput.run(quick=True)
    _well_formed(r, "throughput")
    assert set(r["arms"]) == set(throughput.ARMS) - set(throughput.LONG)  # the long arm: the full run only
    for name, arm in r["arms"].items():
        b = arm["breakdown"]
        assert b["evaluations"] == r["evaluation_budget"], name  # the budget binds, in each part
        # two parts per arm, each the Evolution's 2 baseline seeds and at least one hypothesis
        assert b["baseline_evaluations"] == 2 * r["schedule"]["repeats"] and b["hypotheses_evaluated"] >= 2
        assert [p["position"] for p in arm["parts"]] == [
            i + 1 for i, step in enumerate(r["schedule"]["order"]) if step.split("#")[0] == name]
        for k in ("share_fit", "share_trainer_overhead", "share_loop_overhead", "non_training_share"):
            assert 0 <= b[k] <= 1, k
        assert b["share_fit"] + b["share_trainer_overhead"] + b["share_loop_overhead"] == pytest.approx(1, abs=1e-3)
        assert 0 < b["fit_seconds"] <= b["trainer_process_seconds"] <= b["slot_seconds"] + 1
        # every successful run reported its CPU seconds in fit, and they are what the headline counts
        assert 0 < b["fit_cpu_seconds"] < b["slot_seconds"]
        assert b["non_training_share"] == pytest.approx(1 - b["fit_cpu_seconds"] / b["slot_seconds"], abs=1e-3)  # rounded
        assert 0 <= b["non_training_share_wall"] <= 1
        assert arm["hypotheses_per_hour"] > 0 and arm["evaluations_per_hour"] >= arm["hypotheses_per_hour"]
        assert arm["per_candidate"]["runs"] == b["evaluations"]  # every run left its timing.json
    assert r["ratio"] == r["arms"]["warm"]["non_training_share"]
    # the same candidates, the same seeds: the warm path trains the same models as the cold one
    for arm in ("warm", "warm_bwrap"):  # zygote children and bubblewrap spares alike
        assert r["arms"][arm]["val_loss_by_run"] and sorted(map(str, r["arms"][arm]["val_loss_by_run"])) == sorted(
            map(str, r["arms"]["cold"]["val_loss_by_run"]))
    # warm runs start in the trusted worker at once; a cold run's start-up is a fresh interpreter and its imports
    assert r["arms"]["warm"]["per_candidate"]["trusted"]["startup"] < r["arms"]["cold"]["per_candidate"]["trusted"]["startup"]


@pytest.mark.timeout(1200)
def test_serving_quick():
    from cambrian.bench import serving

    r = serving.run(quick=True)
    _well_formed(r, "serving")
    for key, phase in r["phases"].items():
        assert phase["errors"] == 0, key
        assert phase["requests"] == (150 if key.endswith("c1") else 300) * r["rounds"], key
        assert phase["max_ms"] >= phase["p99_ms"] >= phase["p50_ms"] > 0, key
        assert phase["rps"] > 0
    assert r["router_added_p99_ms"] == pytest.approx(r["phases"]["router_c1"]["p99_ms"] - r["phases"]["direct_c1"]["p99_ms"],
                                                     abs=1e-3)
    assert r["router_in_process_overhead_histogram"]["p99_ms"] > 0


@pytest.mark.timeout(1200)
def test_scaling_quick():
    from cambrian.bench import scaling

    r = scaling.run(quick=True)
    _well_formed(r, "scaling")
    assert set(r["workers"]) == {"1", "2"} and r["scaling_efficiency"]["1"] == 1.0
    assert all(w["examples_per_second"] > 0 and w["auc"] > 0.5 for w in r["workers"].values())
    assert r["ratio"] == r["scaling_efficiency"]["2"] > 0


@pytest.mark.timeout(1200)
def test_training_quick():
    """The trainer on the contained path's streamed rows (and on rows in memory) against three plain loops, the
    headline against the strongest of them; the trainer and the gather loop timed twice each and pooled."""
    from cambrian.bench import training

    r = training.run(quick=True)
    _well_formed(r, "training")
    runs = r["runs_examples_per_second"]
    assert all(len(runs[k]) == 2 for k in ("trainer", "trainer_in_memory", "trainer_unfused", "gather", "gather_fused"))
    # pooled: the examples of both runs over their summed seconds, so between the two runs' rates
    assert min(runs["trainer"]) <= r["trainer_examples_per_second"] <= max(runs["trainer"])
    assert r["trainer_in_memory_examples_per_second"] > 0
    assert r["fused_step_gain"] == pytest.approx(
        r["trainer_examples_per_second"] / r["trainer_unfused_examples_per_second"], rel=0.01)
    measured = r["baseline_examples_per_second"]
    assert {"dataloader", "gather", "gather_fused"} <= set(measured)
    assert "gather_compiled" in measured or r["compiled_error"]
    assert r["strongest_baseline"] == max(measured, key=measured.get)
    assert r["ratio"] == pytest.approx(r["trainer_examples_per_second"] / measured[r["strongest_baseline"]], rel=0.01)


@pytest.mark.timeout(1200)
def test_streaming_quick():
    """The trainer streams its rows (a buffer of 2 of the file's 5 row groups) and loads them whole, on the same
    files, each in its own process: both train every row, and the streamed process held less."""
    from cambrian.bench import streaming

    r = streaming.run(quick=True)
    _well_formed(r, "streaming")
    whole, streamed = r["modes"]["whole"], r["modes"]["streamed"]
    assert streamed["shuffle_row_groups"] < r["source"]["row_groups"] < whole["shuffle_row_groups"]
    assert r["prepare"]["n_train"] + r["prepare"]["n_val"] == r["source"]["impressions"]
    for mode in (whole, streamed):
        assert mode["examples_per_second"] > 0 and mode["peak_rss_mib"] >= r["imports_rss_mib"] * 0.9
    assert r["ratio"] == pytest.approx(streamed["examples_per_second"] / whole["examples_per_second"], rel=1e-2)
