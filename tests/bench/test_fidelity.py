"""The fidelity benchmark: its arithmetic (fast) and its quick run end to end (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cambrian.bench.fidelity import (CANDIDATES, QUICK, SIGNALS, TRAP, WATCH_LABEL, WORLDS, bench_world,
                                     candidate_config, command, offline_signals, online_effects, paired_effect,
                                     rank_correlations)
from cambrian.bench.fidelity import run as fidelity_run
from cambrian.errors import ConfigError


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_candidates_span_all_four_components_with_a_trap_and_neutral_changes(world):
    candidates = WORLDS[world].candidates
    components = {c for c, _ in candidates.values()}
    assert components == {"optimizer", "architecture", "reward", "training"}
    assert len(candidates) >= 16 and TRAP in candidates
    assert "training:seed" in candidates  # a change that cannot matter online


def test_the_hooked_worlds_candidates_are_patches_on_its_watch_time_model():
    """Φ0 of the hooked world learns watch time; a reward patch merges into Φ0's reward as a Hypothesis' patch
    does, so a weight alone keeps Φ0's label and the trap learns clicks. Every candidate is a valid Φ other than
    Φ0 (training changes aside), and the world's preset is a real one."""
    from cambrian.trainer.config import parse_config
    from cambrian.world.params import PRESETS

    setup = WORLDS["hooked"]
    assert setup.preset in PRESETS and bench_world("calibrated").base == {}
    # the same product on the world where bait's users are lost sooner: the hooked world's changes, and rewards that
    # weigh satisfaction into the watch label (each a valid Φ, checked below with the others)
    wary = bench_world("wary")
    assert wary.preset in PRESETS and wary.base == setup.base
    added = {n: d for n, d in wary.candidates.items() if n not in setup.candidates}
    assert set(setup.candidates) <= set(wary.candidates) and len(added) == 6
    assert all(c == "reward" and any(s in str(d) for s in ('"like"', "hate", "thumb_intensity"))
               for c, d in added.values())
    base = parse_config(candidate_config(QUICK, {}, setup.base))
    assert base.reward.label == WATCH_LABEL
    weighted = parse_config(candidate_config(QUICK, setup.candidates["reward:return_weighted"][1], setup.base))
    assert weighted.reward.label == WATCH_LABEL and "returned_next_day" in weighted.reward.weight
    trap = parse_config(candidate_config(QUICK, setup.candidates[TRAP][1], setup.base))
    assert trap.reward.label == "label" and "thumb_intensity" in trap.reward.weight
    epochs = parse_config(candidate_config(QUICK, {"training": {"epochs_factor": 3}}, setup.base))
    assert epochs.reward.label == WATCH_LABEL and epochs.training.epochs == 3 * QUICK.epochs
    for name, (component, delta) in wary.candidates.items():  # the hooked world's and the added ones
        cfg = parse_config(candidate_config(QUICK, delta, setup.base), name)
        assert cfg != base or component == "training", name
    with pytest.raises(ConfigError, match="unknown benchmark world 'nope'"):
        fidelity_run(quick=True, world="nope")
    assert command(False, "hooked", (0, 1)) == "cambrian bench run fidelity --world hooked --seeds 0,1"
    assert command(True, "calibrated") == "cambrian bench run fidelity --quick"


def test_candidate_config_scales_training_and_keeps_other_components():
    from cambrian.trainer.config import parse_config

    base = parse_config(candidate_config(QUICK, {}))
    assert base.training.epochs == QUICK.epochs and base.training.max_train_examples == QUICK.max_train_examples
    more = parse_config(candidate_config(QUICK, {"training": {"epochs_factor": 3}}))
    assert more.training.epochs == 3 * QUICK.epochs
    half = parse_config(candidate_config(QUICK, {"training": {"examples_factor": 0.5}}))
    assert half.training.max_train_examples == QUICK.max_train_examples // 2
    for name, (component, delta) in CANDIDATES.items():  # every candidate is a valid Φ
        cfg = parse_config(candidate_config(QUICK, delta), name)
        assert cfg != base or component == "training", name


def test_floors_read_the_worlds_declared_objective():
    """A candidate's floors are its gain on the objective its world's Evolution declares for the component (the
    wary world scores rewards by like_corr), as the loop's gate would read them; the defaults elsewhere."""
    from cambrian.bench.fidelity import floors

    base_runs = [{"like_corr": v, "top_watch_share": t, "val_loss": 0.5}
                 for v, t in ((0.10, 0.20), (0.11, 0.21), (0.12, 0.19))]
    better_likes = {"like_corr": 0.15, "top_watch_share": 0.18, "val_loss": 0.5}
    assert floors("reward", better_likes, base_runs) < 0  # top_watch_share: below Φ0's seeds
    assert floors("reward", better_likes, base_runs, WORLDS["wary"].offline) > 1  # like_corr: far above them
    assert floors("reward", better_likes, base_runs, WORLDS["calibrated"].offline) == floors(
        "reward", better_likes, base_runs)
    # the declared objective is per component: an optimizer change is still scored by val_loss
    assert floors("optimizer", better_likes, base_runs, WORLDS["wary"].offline) == floors(
        "optimizer", better_likes, base_runs)


def test_paired_effect_uses_the_per_user_differences():
    base = np.array([10.0, 0.0, 5.0, 20.0])
    arm = base * 1.1  # every user +10%: the paired s.e. is far below the unpaired one
    eff, se = paired_effect(arm, base)
    assert eff == pytest.approx(0.1)
    diff = arm - base
    assert se == pytest.approx(diff.std(ddof=1) / 2 / base.mean())
    assert paired_effect(np.zeros(3), np.zeros(3)) == (0.0, math.inf)


def test_online_effects_windows():
    n, days = 5, 9
    base = {"minutes": np.ones((n, days)), "active": np.ones((n, days)), "clicks": np.ones((n, days)),
            "impressions": np.full((n, days), 10.0)}
    arm = {k: v.copy() for k, v in base.items()}
    arm["minutes"][:, :3] = 1.5   # +50% early
    arm["minutes"][:, -3:] = 0.5  # -50% late
    arm["clicks"][:, :3] = 2.0
    e = online_effects(arm, base)
    assert e["minutes_early"] == pytest.approx(0.5) and e["minutes_late"] == pytest.approx(-0.5)
    assert e["minutes"] == pytest.approx(0.0) and e["ctr_early"] == pytest.approx(1.0)
    assert e["active_days"] == 0.0
    assert "hate_rate" not in e  # arms served without hates (older callers) report no hate rate


def test_online_effects_hate_rate_and_the_bait_shown():
    n, days = 4, 6
    base = {"minutes": np.ones((n, days)), "active": np.ones((n, days)), "clicks": np.ones((n, days)),
            "impressions": np.full((n, days), 10.0), "hates": np.full((n, days), 0.5), "bait": np.full((n, days), 3.0)}
    arm = {**base, "hates": np.full((n, days), 0.75), "bait": np.full((n, days), 6.0)}
    e = online_effects(arm, base)
    assert e["hate_rate"] == pytest.approx(0.5)  # 7.5% of impressions against 5%
    assert (e["bait_shown"], e["bait_shown_reference"]) == (pytest.approx(0.6), pytest.approx(0.3))


def test_rank_correlations_per_signal():
    rows = []
    for i, y in enumerate([0.01, 0.02, 0.03, 0.04]):
        base = {"val_loss": 0.5, "long_watch_corr": 0.0, "return_corr": 0.0, "auc": 0.5, "top_watch_share": 0.06,
                "like_corr": 0.0, "top_completion_share": 0.06, "top_like_share": 0.06}
        m = {"val_loss": 0.5 - i, "long_watch_corr": -i, "return_corr": [0.1, 0.3, 0.2, 0.0][i], "auc": 0.5,
             "top_watch_share": 0.06 + 0.01 * i, "like_corr": [0.0, 0.1, 0.3, 0.2][i],
             "top_completion_share": 0.06 - 0.01 * i, "top_like_share": [0.1, 0.0, 0.3, 0.2][i]}
        rows.append({"component": "optimizer", "offline": {**offline_signals(m, base), **m, "floors": 0.5 * i},
                     "online": {"minutes": y}})
    corr = rank_correlations(rows)
    assert set(corr) == {*SIGNALS, "floors", "surrogate_loo"}
    assert corr["floors"] == 1.0
    assert corr["val_loss_gain"] == 1.0 and corr["long_watch_corr_gain"] == -1.0 and corr["top_watch_share_gain"] == 1.0
    assert corr["auc_gain"] is None  # constant: undefined, reported as such
    assert -1 < corr["return_corr_gain"] < 1 and corr["like_corr_gain"] == pytest.approx(0.8)
    assert corr["top_completion_share_gain"] == -1.0 and corr["top_like_share_gain"] == pytest.approx(0.6)
    # a stored run from before the top shares of completion and likes existed: those signals are left out
    for r in rows:
        for k in ("top_completion_share", "top_like_share"):
            del r["offline"][k], r["offline"][f"{k}_gain"]
    older = rank_correlations(rows)
    assert set(older) == {*SIGNALS, "floors", "surrogate_loo"} - {"top_completion_share_gain", "top_like_share_gain"}
    assert older["like_corr_gain"] == corr["like_corr_gain"]


def test_the_surrogate_learns_which_proxy_transfers_from_the_other_candidates():
    """Online effect = 0.2 x top-watch-share gain + a reward bonus; val_loss gain and the floors are noise. Each
    candidate is predicted from the others only (the online agent's features), and the prediction orders
    them as online does."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(16):
        comp = ("optimizer", "architecture", "reward", "training")[i % 4]
        lw = rng.normal(0, 0.05)
        rc = rng.normal(0, 0.01)
        noise = rng.normal(0, 0.03)
        off = {"val_loss_gain": rng.normal(0, 0.01), "long_watch_corr_gain": noise, "return_corr_gain": rc,
               "auc_gain": rng.normal(0, 0.01), "floors": rng.normal(0, 1), "long_watch_corr": -0.1 + noise,
               "return_corr": -0.05 + rc, "top_watch_share_gain": lw, "top_watch_share": 0.07 + lw,
               "like_corr_gain": noise, "like_corr": 0.02 + noise}
        rows.append({"component": comp, "offline": off,
                     "online": {"minutes": 0.2 * lw + (0.01 if comp == "reward" else 0.0) + rng.normal(0, 0.001)}})
    corr = rank_correlations(rows)
    assert corr["surrogate_loo"] > 0.8 and corr["surrogate_loo"] > abs(corr["val_loss_gain"])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fidelity_quick_end_to_end():
    from cambrian.bench import fidelity

    r = fidelity.run(quick=True)
    assert r["name"] == "fidelity" and r["quick"] is True and r["command"] == "cambrian bench run fidelity --quick"
    json.dumps(r)
    assert not r["failed"], r["failed"]
    assert len(r["candidates"]) == len(CANDIDATES)
    assert set(r["rank_correlation"]) == {*SIGNALS, "floors", "surrogate_loo"}
    seed = next(c for c in r["candidates"] if c["name"] == "training:seed")
    trap = r["clickbait_trap"]
    assert trap is not None and math.isfinite(trap["minutes_late"])
    for c in r["candidates"]:
        assert math.isfinite(c["online"]["minutes"]) and c["online"]["minutes_se"] >= 0
    # a different training seed is not a different product: its effect is within noise of zero
    assert abs(seed["online"]["minutes"]) < max(4 * seed["online"]["minutes_se"], 0.03)


def test_every_reward_candidate_passes_the_reward_sql_gate():
    """`like` is an SQL keyword: an unquoted CAST(like ...) failed the gate and silently left the run."""
    import pandas as pd

    from cambrian.trainer.config import RewardConfig
    from cambrian.trainer.data import IMPRESSION_COLUMNS, reward_labels

    df = pd.DataFrame({c: [0, 1, 1, 0] for c in IMPRESSION_COLUMNS})
    df["watch_seconds"], df["completion"], df["thumb_intensity"] = [0.0, 90.0, 30.0, 0.0], [0, 0.9, 0.3, 0], 0.5
    df["hate"], df["like"], df["skip"] = [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0]
    for name, (_, delta) in {**CANDIDATES, **WORLDS["hooked"].candidates}.items():
        if "reward" in delta:
            label, weight = reward_labels(df, RewardConfig(**delta["reward"]))
            assert len(label) == len(df) and (weight >= 0).all(), name


def test_the_surrogate_after_k_rollouts_predicts_from_k_others_only():
    from cambrian.bench.fidelity import surrogate_after

    rng = np.random.default_rng(4)
    rows = []  # recorded before like_corr existed: the surrogate reads its absence as no evidence
    for i in range(14):
        lw = rng.normal(0, 0.03)
        rows.append({"component": ("optimizer", "reward")[i % 2],
                     "offline": {"floors": rng.normal(0, 2), "top_watch_share": lw, "long_watch_corr": rng.normal(0, 0.03),
                                 "return_corr": rng.normal(0, 0.01)},
                     "online": {"minutes": 0.3 * lw + rng.normal(0, 0.0005)}})
    few, many = surrogate_after(rows, k=3, draws=20), surrogate_after(rows, k=10, draws=20)
    assert few["p10"] <= few["mean"] <= few["p90"]
    assert many["mean"] > 0.7 and many["mean"] > few["mean"]
    assert surrogate_after(rows[:5], k=8) is None  # not enough candidates for 8 others


def test_the_surrogate_fitted_once_ranks_the_held_out_candidates():
    """One fit on k candidates ranks the rest: where the effect follows return_corr *against* the prior's
    direction (top_watch_share is noise here), the raw top_watch_share on the same held-out sets ranks at about
    0 and the surrogate learns the real proxy from 10 rollouts."""
    from cambrian.bench.fidelity import surrogate_ranks_the_rest

    rng = np.random.default_rng(8)
    rows = []
    for i in range(20):
        rc, tw = rng.normal(0, 0.03), rng.normal(0, 0.03)
        rows.append({"component": ("optimizer", "reward", "training", "architecture")[i % 4],
                     "offline": {"floors": rng.normal(0, 2), "long_watch_corr": rng.normal(0, 0.03), "return_corr": rc,
                                 "val_loss_gain": rng.normal(0, 0.01), "long_watch_corr_gain": rng.normal(0, 0.03),
                                 "return_corr_gain": rc, "auc_gain": rng.normal(0, 0.01),
                                 "top_watch_share": tw, "top_watch_share_gain": tw,
                                 "like_corr": (like := rng.normal(0, 0.03)), "like_corr_gain": like},
                     "online": {"minutes": 0.3 * rc + rng.normal(0, 0.0005)}})
    r = surrogate_ranks_the_rest(rows, k=10, draws=30)
    assert r["k"] == 10 and r["p10"] <= r["mean"] <= r["p90"]
    assert r["raw_signals_same_sets"]["return_corr_gain"] > 0.95  # the truth itself (up to the noise)
    assert abs(r["raw_signals_same_sets"]["top_watch_share_gain"]) < 0.3
    assert r["mean"] > 0.7
    assert surrogate_ranks_the_rest(rows[:10], k=8) is None  # fewer than 3 left to rank


def test_several_world_seeds_are_run_and_reported_together(monkeypatch):
    """`--seeds`: each world seed is its own run; the headline is the mean of the surrogate's held-out ranking over
    them and counts the seeds at the target, beside each raw proxy's mean on the same held-out sets."""
    from cambrian.bench import fidelity

    def fake_seed(quick, progress, size, candidates, seed, world):
        assert world == "calibrated"
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(14):
            tw, noise = rng.normal(0, 0.03), rng.normal(0, 0.03 * seed)  # seed 0: the effect is the proxy itself
            rows.append({"component": ("optimizer", "reward")[i % 2],
                         "offline": {"floors": rng.normal(0, 2), "top_watch_share": tw, "long_watch_corr": tw,
                                     "return_corr": rng.normal(0, 0.01), "val_loss_gain": 0.0,
                                     "long_watch_corr_gain": tw, "return_corr_gain": 0.0, "auc_gain": 0.0,
                                     "top_watch_share_gain": tw, "like_corr": tw, "like_corr_gain": tw},
                         "online": {"minutes": 0.3 * tw + noise}})
        rest = fidelity.surrogate_ranks_the_rest(rows, draws=20)
        return {"world": {"seed": seed}, "surrogate_ranks_the_rest_after_8": rest, "surrogate_after_8_rollouts": None,
                "rank_correlation": fidelity.rank_correlations(rows), "median_abs_effect": 0.01,
                "max_abs_effect": 0.02, "clickbait_trap": None, "seconds": 1.0, "candidates": rows}

    monkeypatch.setattr(fidelity, "run_seed", fake_seed)
    r = fidelity.run(quick=True, seeds=(0, 3))
    assert r["command"] == "cambrian bench run fidelity --quick --seeds 0,3" and r["world"] == "calibrated"
    assert [x["seed"] for x in r["summary"]] == [0, 3] and len(r["seeds"]) == 2
    clean, noisy = (x["rest"] for x in r["summary"])
    assert clean > 0.9 > noisy  # the surrogate follows the proxies where they are the truth
    assert r["ratio"] == pytest.approx((clean + noisy) / 2, abs=1e-4)
    assert r["seeds_at_or_above_0.7"] == 1
    # these rows recorded no top shares of completion or likes (as stored runs from before them): not reported
    assert set(r["raw_same_sets_mean"]) == {*SIGNALS, "floors"} - {"top_completion_share_gain", "top_like_share_gain"}
    json.dumps(r)


def test_a_stored_run_is_re_read_offline_exactly_and_a_changed_reading_is_named(tmp_path):
    """The replay trains each stored world's Φ0 and candidates again and scores them with today's code: training
    is deterministic, so every reading the stored run had comes back (no mismatch) and the online effects are the
    stored ones; a reading that was stored differently (here: edited) is named, not silently replaced."""
    from cambrian.bench import fidelity

    tiny = fidelity.Size(users=120, log_days=3, online_days=2, epochs=1, max_train_examples=5_000)
    picked = {k: CANDIDATES[k] for k in ("optimizer:lr_x3", "reward:clickbait", "training:seed")}
    stored = fidelity.run_seed(size=tiny, candidates=picked, seed=3)
    for row in stored["candidates"]:  # as a run from before the top shares of completion and likes
        for k in ("top_completion_share", "top_like_share"):
            del row["offline"][k], row["offline"][f"{k}_gain"]
    edited = json.loads(json.dumps(stored))
    edited["candidates"][0]["offline"]["like_corr"] += 0.01
    del edited["world"]["name"]  # as a run from before worlds had names (4 Dec 2026): the default world
    path = tmp_path / "stored.json"
    path.write_text(json.dumps({"seeds": [stored, edited], "command": "stored", "ratio": 0.5, "commit": "abc"}))

    r = fidelity.run(replay=path)
    same, changed = r["seeds"]
    assert same["replay"]["mismatches"] == [] and r["replay"]["mismatches"] == 1
    assert changed["replay"]["mismatches"] == [f"optimizer:lr_x3: like_corr "
                                               f"{edited['candidates'][0]['offline']['like_corr']} stored, "
                                               f"{stored['candidates'][0]['offline']['like_corr']} now"]
    for old, new in zip(stored["candidates"], same["candidates"]):
        assert new["online"] == old["online"] and new["name"] == old["name"]
        assert {k: new["offline"][k] for k in old["offline"]} == old["offline"]
        assert 0 <= new["offline"]["top_like_share"] <= 1 and 0 <= new["offline"]["top_completion_share"] <= 1
    assert "top_like_share_gain" in same["rank_correlation"] and r["world"] == "calibrated"
    assert changed["world"]["name"] == "calibrated"
