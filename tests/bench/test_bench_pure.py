"""The arithmetic of the search, throughput and serving benchmarks (fast, no training or servers)."""

import math
import subprocess
import sys

import pytest

from cambrian.bench.search import (apply_numeric, baseline_config, best_is_written, best_so_far, change_kind,
                                   evals_to_reach, numeric_space, paired_online, run_variant, summarise)
from cambrian.bench.serving import histogram_quantile, latency_summary, parse_histogram, percentile
from cambrian.bench.throughput import ARMS, pool_breakdowns, schedule, summarise_arm, timing_breakdown


def test_best_so_far_skips_failures():
    assert best_so_far([None, 0.1, float("nan"), 0.05, 0.3]) == [-math.inf, 0.1, 0.1, 0.1, 0.3]


def test_evals_to_reach_and_censoring():
    curve = [0.1, 0.1, 0.2, 0.4]
    assert evals_to_reach(curve, 0.2, 4) == (3, False)
    assert evals_to_reach(curve, 0.5, 4) == (5, True)


def test_summarise_ratio_is_pooled_over_seeds():
    curves = {
        "tpe": [[0.1, 0.2, 0.3, 0.3], [0.1, 0.1, 0.1, 0.4]],  # TPE reaches its final best at 3 and 4
        "builtin": [[0.1, 0.35, 0.35, 0.35], [0.5, 0.5, 0.5, 0.5]],  # at 2 and 1
        "random": [[0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]],  # never: censored at 5
    }
    s = summarise(curves, 4)
    assert s["tpe_final_best"] == [0.3, 0.4]
    assert s["arms"]["tpe"]["evals_to_tpe_best"] == [3, 4]
    assert s["arms"]["builtin"]["evals_to_tpe_best"] == [2, 1]
    assert s["arms"]["builtin"]["ratio_to_tpe"] == pytest.approx(3 / 7)
    assert s["arms"]["random"]["censored"] == [True, True]
    assert s["arms"]["tpe"]["ratio_to_tpe"] == 1.0
    # per-seed ratios 2/3 and 1/4: their median, not the pooled ratio
    assert s["arms"]["builtin"]["median_seed_ratio_to_tpe"] == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert s["arms"]["builtin"]["seeds_above_tpe"] == 2 and s["arms"]["random"]["seeds_above_tpe"] == 0
    assert s["arms"]["tpe"]["seeds_above_tpe"] == 0  # never above itself


def test_paired_online_differences_are_per_seed():
    def seed(tpe, builtin):
        on = lambda m: {"dau_frac": 0.5, "minutes_per_user_day": m}
        return {"arms": {"tpe": {"online": on(tpe)}, "builtin": {"online": on(builtin)}, "random": {"online": None},
                         "llm": {"online": on(tpe)}}}

    out = paired_online([seed(1.0, 1.5), seed(2.0, 2.1)])
    assert out["builtin"]["minutes_per_user_day_diff_mean"] == pytest.approx(0.3)
    assert out["builtin"]["minutes_per_user_day_diff_se"] == pytest.approx(0.2)
    assert out["tpe"]["minutes_per_user_day_diff_mean"] == 0 and "random" not in out


def test_apply_numeric_changes_only_numeric_settings():
    base = baseline_config(2, 7)
    cfg = apply_numeric(base, {"lr": 0.01, "weight_decay": 1e-5, "embedding_dim": 8, "hidden1": 40, "hidden2": 20,
                               "dropout": 0.2, "epochs": 3})
    assert cfg.optimizer.lr == 0.01 and cfg.architecture.hidden == [40, 20] and cfg.training.epochs == 3
    assert cfg.reward == base.reward and cfg.architecture.name == base.architecture.name
    assert cfg.training.seed == 7 and base.training.epochs == 2


def test_percentiles_and_summary():
    lat = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(lat, 50) == 0.05 and percentile(lat, 99) == 0.099 and percentile(lat, 100) == 0.1
    s = latency_summary(lat, 2.0)
    assert s["rps"] == 50 and s["p99_ms"] >= s["p50_ms"] > 0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_histogram_quantile_from_prometheus_text():
    text = "\n".join([
        'x_seconds_bucket{le="0.001"} 50.0', 'x_seconds_bucket{le="0.002"} 90.0',
        'x_seconds_bucket{le="0.005"} 100.0', 'x_seconds_bucket{le="+Inf"} 100.0', "x_seconds_count 100.0",
    ])
    b = parse_histogram(text, "x_seconds")
    assert len(b) == 4
    assert histogram_quantile(b, 0.5) == pytest.approx(0.001)
    assert histogram_quantile(b, 0.7) == pytest.approx(0.0015)
    assert histogram_quantile([(math.inf, 0.0)], 0.5) is None


def test_timing_breakdown_from_training_runs():
    runs = [
        {"hypothesis": "baseline", "ok": True, "seconds": 8.0, "fit_seconds": 6.0, "fit_cpu_seconds": 4.0},
        {"hypothesis": "w1-0", "ok": True, "seconds": 7.0, "fit_seconds": 5.0, "fit_cpu_seconds": 3.0},
        {"hypothesis": "w1-1", "ok": False, "seconds": 1.0, "fit_seconds": None, "fit_cpu_seconds": 0.5},
    ]
    b = timing_breakdown(runs, wall_seconds=10.0, slots=2)
    assert b["evaluations"] == 3 and b["evaluations_ok"] == 2 and b["hypotheses_evaluated"] == 2
    assert b["baseline_evaluations"] == 1
    assert b["fit_seconds"] == 11.0 and b["trainer_process_seconds"] == 16.0
    # training is what the trainers computed (CPU seconds of successful runs), not the wall their fit spanned
    assert b["fit_cpu_seconds"] == 7.0
    assert b["non_training_share"] == pytest.approx(1 - 7 / 20)
    assert b["non_training_share_wall"] == pytest.approx(1 - 11 / 20)
    assert b["share_fit"] + b["share_trainer_overhead"] + b["share_loop_overhead"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        timing_breakdown(runs, 0.0, 2)


def test_throughput_schedule_interleaves_the_arms_forwards_then_backwards():
    order = schedule(["a", "b", "c", "d"], 2)
    assert order == [("a", 0), ("b", 0), ("c", 0), ("d", 0), ("d", 1), ("c", 1), ("b", 1), ("a", 1)]
    # every arm's mean position is the same: a load that drifts linearly over the run weighs on each alike
    for arm in "abcd":
        assert sum(i for i, (a, _) in enumerate(order) if a == arm) == 7
    assert schedule(["a", "b"], 3) == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert schedule(list(ARMS), 1) == [(a, 0) for a in ARMS]
    with pytest.raises(ValueError):
        schedule(["a"], 0)


def _part(hypotheses, wall, fit, fit_cpu, seconds):
    runs = [{"hypothesis": h, "ok": True, "seconds": seconds, "fit_seconds": fit, "fit_cpu_seconds": fit_cpu}
            for h in hypotheses]
    return runs, timing_breakdown(runs, wall, 2)


def test_throughput_pools_an_arms_parts_as_one_loop():
    runs1, b1 = _part(["baseline", "baseline", "h-0", "h-1"], wall=10.0, fit=2.0, fit_cpu=1.5, seconds=4.0)
    runs2, b2 = _part(["baseline", "baseline", "h-0", "h-1"], wall=30.0, fit=3.0, fit_cpu=2.0, seconds=6.0)
    pooled = pool_breakdowns([b1, b2])
    # the second part trains the same hypotheses by name, and they count again: 4 hypotheses, 4 baseline runs
    assert pooled["hypotheses_evaluated"] == 4 and pooled["baseline_evaluations"] == 4 and pooled["evaluations"] == 8
    assert pooled["slot_seconds"] == 80.0 and pooled["fit_seconds"] == 20.0 and pooled["fit_cpu_seconds"] == 14.0
    assert pooled["non_training_share"] == pytest.approx(1 - 14 / 80)  # the ratio of the sums, not a mean of ratios
    assert pooled["non_training_share_wall"] == pytest.approx(1 - 20 / 80)
    assert pooled["share_fit"] + pooled["share_trainer_overhead"] + pooled["share_loop_overhead"] == pytest.approx(1)
    # the same as one loop of both parts' runs over their summed wall, had the names been distinct
    renamed = [{**r, "hypothesis": r["hypothesis"] + "'"} if r["hypothesis"] != "baseline" else r for r in runs2]
    assert pooled == pytest.approx(timing_breakdown(runs1 + renamed, 40.0, 2))
    with pytest.raises(ValueError):
        pool_breakdowns([])

    def raw(part, b, wall, load):
        return {"part": part, "wall_seconds": wall, "breakdown": b, "timings": [{"seconds": {"prepare": wall / 10}}],
                "val_loss_by_run": [["h-0", 0, 0.3]], "stop_reason": f"done {part}",
                "load_average_start": [load, 0, 0], "load_average_end": [load + 1, 0, 0], "load_samples": [load, load + 1]}

    arm = summarise_arm({"warm": True}, [raw(0, b1, 10.0, 1.0), raw(1, b2, 30.0, 3.0)], [4, 5])
    assert arm["hypotheses_per_hour"] == pytest.approx(4 / 40 * 3600)
    assert arm["evaluations_per_hour"] == pytest.approx(8 / 40 * 3600) and arm["loop_wall_seconds"] == 40.0
    assert arm["non_training_share"] == pytest.approx(1 - 14 / 80, abs=1e-4)
    assert arm["per_candidate"] == {"runs": 2, "trusted": {"prepare": 2.0}, "trainer_phases": {}}
    assert arm["val_loss_by_run"] == [["h-0", 0, 0.3], ["h-0", 0, 0.3]]
    assert arm["load_average_start"] == [1.0, 0, 0] and arm["load_average_end"] == [4.0, 0, 0]
    assert arm["load_1min_mean"] == 2.5
    assert [(p["position"], p["hypotheses_per_hour"], p["load_1min_mean"]) for p in arm["parts"]] == [
        (4, 720.0, 1.5), (5, 240.0, 3.5)]
    with pytest.raises(ValueError):
        summarise_arm({}, [raw(0, b1, 10.0, 1.0)], [1, 2])


def test_cli_lists_and_rejects_unknown(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cambrian.cli", "bench", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "search" in out.stdout and "serving" in out.stdout and "search-plugin" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "cambrian.cli", "bench", "run", "nope", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown benchmark" in (bad.stderr + bad.stdout)


@pytest.mark.parametrize("args, says", [
    (["multifidelity", "--seeds", "5,x"], "expected comma-separated integers"),
    (["multifidelity", "--seeds", "5,5"], "distinct non-negative"),
    (["serving", "--seeds", "5,6"], "takes no --seeds"),
    (["search", "--seeds", "5,5"], "distinct non-negative"),
    (["search", "--users", "4000"], "takes no --users"),
    (["trap", "--users", "5"], "Invalid value for '--users'"),
    (["search", "--online-days", "21"], "takes no --online-days"),
    (["decision-world", "--durations", "1,10"], "distinct days from 2 to 60"),
    (["search", "--durations", "10,21"], "takes no --durations"),
    (["search", "--world", "hooked"], "takes no --world"),
    (["fidelity", "--world", "nope"], "unknown benchmark world 'nope'"),
    (["trap", "--world", "nope"], "unknown benchmark world 'nope'"),
    (["search", "--replay", "pyproject.toml"], "takes no --replay"),
    (["fidelity", "--replay", "pyproject.toml"], "--replay pyproject.toml: not a stored fidelity result"),
    (["fidelity", "--replay", "no-such.json"], "does not exist"),
])
def test_cli_refuses_bad_seeds_before_running_anything(tmp_path, args, says):
    bad = subprocess.run([sys.executable, "-m", "cambrian.cli", "bench", "run", *args, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and says in " ".join((bad.stderr + bad.stdout).split()), bad.stderr
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_wide_space_reaches_every_named_setting_and_nothing_written():
    import optuna

    from cambrian.trainer.config import ARCHITECTURE_NAMES

    narrow, wide = numeric_space(3), numeric_space(3, wide=True)
    assert set(narrow) < set(wide)
    assert set(wide["architecture"].choices) == set(ARCHITECTURE_NAMES)
    base = baseline_config(1, 3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask(wide)
        cfg = apply_numeric(base, trial.params)
        study.tell(trial, 0.0)
        seen.add((cfg.optimizer.name, cfg.architecture.name))
        assert cfg.architecture.name == trial.params["architecture"]
        assert cfg.training.batch_size == trial.params["batch_size"]
        # nothing written: the reward and the plugin code stay Φ0's
        assert cfg.reward == base.reward and cfg.architecture.code is None and cfg.optimizer.code is None
    assert len({a for _, a in seen}) == len(ARCHITECTURE_NAMES) and len({o for o, _ in seen}) > 2


def test_the_loops_extra_baseline_seeds_are_evaluations_without_a_value():
    """Φ0's own seed is the loop's first evaluation (a numeric arm's first is the same run), its other seeds
    measure the noise floor: they cost an evaluation each but cannot reach a target or win, however lucky."""
    from cambrian.bench.search import _winner, counted, noise_seeds_after_phi0

    runs = [{"hypothesis": "baseline", "seed": 2001, "value": 0.30, "bundle": "b1"},  # a lucky noise seed, finished first
            {"hypothesis": "baseline", "seed": 2000, "value": -0.06, "bundle": "b0"},  # Φ0's own training seed
            {"hypothesis": "h1", "seed": 2000, "value": 0.01, "bundle": "h1"},
            {"hypothesis": "h2", "seed": 2000, "value": None, "bundle": None}]
    ordered = noise_seeds_after_phi0(runs, 2000)
    assert [(r["hypothesis"], r["seed"], bool(r.get("noise_seed"))) for r in ordered] == [
        ("baseline", 2000, False), ("baseline", 2001, True), ("h1", 2000, False), ("h2", 2000, False)]
    with pytest.raises(RuntimeError, match="no baseline run with Φ0's seed 7"):
        noise_seeds_after_phi0(runs, 7)
    curve = best_so_far(counted(ordered))
    assert curve == [-0.06, -0.06, 0.01, 0.01]
    assert evals_to_reach(curve, 0.01, 4) == (3, False) and evals_to_reach(curve, 0.2, 4) == (5, True)
    assert _winner(ordered)["hypothesis"] == "h1"


def test_change_kind_tells_written_changes_from_settings():
    assert change_kind({"params": {"baseline": True}}) == "baseline"
    assert change_kind({"hypothesis": "baseline", "delta": None}) == "baseline"
    assert change_kind({"params": {"lr": 0.01}}) == "setting"
    assert change_kind({"delta": {"patch": {"name": "AdamW", "weight_decay": 1e-4}}}) == "setting"
    assert change_kind({"delta": {"patch": {"label": "CAST(click AS DOUBLE)", "weight": "1.0 + x"}}}) == \
        "reward expression"
    assert change_kind({"delta": {"patch": {"params": {"plugin": "p"}}, "code": "class Model: ..."}}) == "plugin code"


def test_best_is_written_needs_a_written_winner_above_every_numeric_arm():
    def arms(tpe, builtin, kind, random=None):
        out = {"tpe": {"winner": {"value": tpe, "kind": "setting"}},
               "builtin": {"winner": {"value": builtin, "kind": kind}}}
        if random is not None:
            out["random"] = {"winner": {"value": random, "kind": "setting"}}
        return out

    assert best_is_written(arms(0.1, 0.2, "reward expression"))
    assert best_is_written(arms(0.1, 0.2, "plugin code", random=0.15))
    assert not best_is_written(arms(0.1, 0.2, "setting"))  # the loop won with a number TPE could have set
    assert not best_is_written(arms(0.1, 0.2, "reward expression", random=0.25))  # random search beat it
    assert not best_is_written(arms(0.2, 0.2, "plugin code"))  # a tie is not out of reach
    assert not best_is_written({"tpe": {"winner": None}, "builtin": {"winner": None}})


def test_run_variant_refuses_arms_without_the_headline_pair():
    with pytest.raises(ValueError, match="tpe and builtin"):
        run_variant("x", {}, quick=True, wide=True, arms=("random", "builtin"))
    with pytest.raises(ValueError, match="tpe and builtin"):
        run_variant("x", {}, quick=True, wide=True, arms=("tpe", "builtin", "grid"))
