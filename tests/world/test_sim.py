"""The simulator's live API: common random numbers, determinism, save/load/resume, misuse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cambrian.errors import ConfigError
from cambrian.world import rng
from cambrian.world.params import WorldParams
from cambrian.world.policies import expected_response, oracle_policy, random_policy
from cambrian.world.sim import IMPRESSION_DTYPES, USER_DAY_DTYPES, ScorePolicy, World, WorldError, concat_logs


def small(n_users=200, **kw) -> World:
    return World(WorldParams(n_users=n_users, **kw), seed=7)


def _without_ids(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["impression_id"]).reset_index(drop=True)


def test_hash_draws_are_counter_based():
    a = rng.uniform(rng.key(3, rng.CLICK, np.arange(10), 5))
    b = rng.uniform(rng.key(3, rng.CLICK, np.arange(10)[::-1], 5))[::-1]
    assert np.array_equal(a, b)  # a draw depends on its key, not on its neighbours
    assert np.all((a > 0) & (a < 1))
    u = rng.uniform(rng.key(1, 2, np.arange(200_000)))
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.std() - np.sqrt(1 / 12)) < 0.005


def test_same_seed_same_world_different_seed_differs():
    logs1 = concat_logs(small().run(random_policy, 2))
    logs2 = concat_logs(small().run(random_policy, 2))
    pd.testing.assert_frame_equal(logs1.impressions, logs2.impressions)
    pd.testing.assert_frame_equal(logs1.user_days, logs2.user_days)
    other = World(WorldParams(n_users=200), seed=8)
    logs3 = concat_logs(other.run(random_policy, 2))
    assert not logs3.impressions["item_id"].equals(logs1.impressions["item_id"])


@pytest.mark.parametrize("policy", ["random", "satisfaction_aware"])
def test_subset_gets_the_same_draws_as_inside_the_full_population(policy):
    full, alone = small(300), small(300)
    subset = np.arange(1, 300, 3)
    logs_full = concat_logs(full.run(oracle_policy(full, policy), 3))
    logs_alone = concat_logs(alone.run(oracle_policy(alone, policy), 3, users=subset))
    im = logs_full.impressions[logs_full.impressions["user_id"].isin(subset)]
    pd.testing.assert_frame_equal(_without_ids(im), _without_ids(logs_alone.impressions))
    ud = logs_full.user_days[logs_full.user_days["user_id"].isin(subset)].reset_index(drop=True)
    pd.testing.assert_frame_equal(ud, logs_alone.user_days)
    assert np.array_equal(full.state.sat[subset], alone.state.sat[subset])
    # users left out did not live the days
    rest = np.setdiff1d(np.arange(300), subset)
    assert (alone.state.day[rest] == 0).all() and (alone.state.day[subset] == 3).all()


def test_disjoint_arms_with_different_policies_share_random_numbers():
    """Arm A under one policy does not perturb arm B's users (the A/B setting of the online loop)."""
    w1, w2 = small(300), small(300)
    a, b = np.arange(0, 300, 2), np.arange(1, 300, 2)
    d1a, d1b = w1.begin_day(a), w1.begin_day(b)  # two arms open at once
    for day, pol in ((d1a, oracle_policy(w1, "ctr_greedy")), (d1b, random_policy)):
        while (req := day.next_request()) is not None:
            day.respond(pol(req))
    log_b = d1b.finish()
    d1a.finish()
    log_b_alone = w2.run_day(random_policy, users=b)
    pd.testing.assert_frame_equal(_without_ids(log_b.impressions), _without_ids(log_b_alone.impressions))


def test_live_step_api_and_log_columns():
    w = small(100)
    day = w.begin_day()
    req = day.next_request()
    assert req.candidates.shape == (len(req.user_ids), w.params.n_candidates)
    srt = np.sort(req.candidates, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all(), "candidates of a request are distinct"
    assert req.step == 0 and req.slate_size == 6
    steps = 0
    while req is not None:
        day.respond(req.candidates[:, ::-1][:, :6])
        steps += 1
        req = day.next_request()
    log = day.finish()
    assert list(log.impressions.columns) == list(IMPRESSION_DTYPES)
    assert list(log.user_days.columns) == list(USER_DAY_DTYPES)
    assert log.impressions.dtypes.astype(str).to_dict() == IMPRESSION_DTYPES
    assert log.user_days.dtypes.astype(str).to_dict() == USER_DAY_DTYPES
    im, ud = log.impressions, log.user_days
    assert im["step"].max() == steps - 1 and len(ud) == 100
    assert (im["impression_id"].to_numpy() == np.arange(len(im))).all()
    per_user = im.groupby("user_id").size()
    assert (ud.set_index("user_id").loc[per_user.index, "impressions"] == per_user).all()
    assert (ud.loc[ud["active"] == 0, "impressions"] == 0).all()
    clicks = im[im["click"] == 1]
    assert (im.groupby(["user_id", "step"])["click"].sum() <= 1).all(), "at most one click per slate"
    assert ((clicks["completion"] > 0) & (clicks["completion"] < 1)).all()
    assert np.allclose(clicks["skip"], clicks["completion"] < 0.2)
    noclick = im[im["click"] == 0]
    assert (noclick[["watch_seconds", "completion", "skip", "like", "hate"]].to_numpy() == 0).all()
    minutes = im.groupby("user_id")["watch_seconds"].sum() / 60
    assert np.allclose(ud.set_index("user_id").loc[minutes.index, "minutes"], minutes, rtol=1e-4)
    # the second day's active users are exactly the ones drawn as returning
    log2 = w.run_day(random_policy)
    assert (log2.user_days["active"].to_numpy() == ud["returned_next_day"].to_numpy()).all()
    assert log2.impressions["impression_id"].min() == len(im)


def test_save_load_resume_continues_identically(tmp_path):
    straight = small(150)
    logs = straight.run(oracle_policy(straight, "watch_time"), 4)

    first = small(150)
    first.run(oracle_policy(first, "watch_time"), 2)
    first.save(tmp_path / "state")
    resumed = World.load(tmp_path / "state")
    assert resumed.day == 2 and resumed.seed == first.seed and resumed.params == first.params
    later = resumed.run(oracle_policy(resumed, "watch_time"), 2)
    for a, b in zip(logs[2:], later):
        pd.testing.assert_frame_equal(a.impressions, b.impressions)
        pd.testing.assert_frame_equal(a.user_days, b.user_days)


def test_load_of_missing_or_foreign_state_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="world.json"):
        World.load(tmp_path)
    w = small(50)
    w.save(tmp_path / "a")
    other = World(WorldParams(n_users=50), seed=99)
    with pytest.raises(WorldError, match="different world"):
        other.save(tmp_path / "a")
    foreign_state = other.save(tmp_path / "b")
    with pytest.raises(ConfigError, match="seed"):
        World.load(tmp_path / "a").load_state(foreign_state)
    with pytest.raises(ConfigError, match="state.npz not found"):
        World.load(tmp_path / "a", state_dir=tmp_path / "nowhere")
    bigger = World(WorldParams(n_users=60), seed=7).save(tmp_path / "c")
    with pytest.raises(ConfigError, match="shape"):
        World.load(tmp_path / "a").load_state(bigger)
    (tmp_path / "a" / "world.json").write_text('{"seed": 7}')
    with pytest.raises(ConfigError, match="malformed"):
        World.load(tmp_path / "a")


def test_misuse_of_the_step_api_is_refused():
    w = small(50)
    day = w.begin_day()
    with pytest.raises(WorldError, match="without a pending request"):
        day.respond(np.zeros((1, 6), dtype=int))
    req = day.next_request()
    n = len(req.user_ids)
    with pytest.raises(WorldError, match="respond"):
        day.next_request()
    with pytest.raises(WorldError, match="shape"):
        day.respond(req.candidates[:, :5])
    with pytest.raises(WorldError, match="same item twice"):
        day.respond(np.repeat(req.candidates[:, :1], 6, axis=1))
    with pytest.raises(WorldError, match=r"\[0, 500\)"):
        day.respond(np.full((n, 6), 10_000) + np.arange(6))
    with pytest.raises(WorldError, match="integer"):
        day.respond(req.candidates[:, :6].astype(float))
    with pytest.raises(WorldError, match="already in an unfinished day"):
        w.begin_day([0, 1])
    with pytest.raises(WorldError, match="unfinished"):
        w.save("/nonexistent/never-written")
    day.respond(req.candidates[:, :6])
    day.finish()
    with pytest.raises(WorldError, match="finished"):
        day.next_request()
    with pytest.raises(WorldError, match=r"\[0, 50\)"):
        w.begin_day([49, 50])
    with pytest.raises(WorldError, match="duplicates"):
        w.begin_day([3, 3])


def test_bad_params_name_the_field():
    with pytest.raises(ConfigError, match="eta_s"):
        WorldParams.build(eta_s=-1)
    with pytest.raises(ConfigError, match="bogus"):
        WorldParams.build(bogus=1)
    with pytest.raises(ConfigError, match="n_candidates"):
        WorldParams.build(n_items=50)
    with pytest.raises(ConfigError, match="seed"):
        World(WorldParams(n_users=5), seed=-1)


def test_score_policy_takes_the_top_slate_in_rank_order():
    w = small(20)
    day = w.begin_day()
    req = day.next_request()
    rank = np.random.default_rng(0).permutation(req.candidates.shape[1])
    slates = ScorePolicy(lambda u, c: np.broadcast_to(-rank, c.shape).astype(np.float32))(req)
    assert np.array_equal(slates, req.candidates[:, np.argsort(rank)[:6]])
    with pytest.raises(WorldError, match="score_fn returned shape"):
        ScorePolicy(lambda u, c: np.zeros(3))(req)


def test_oracle_expectations_follow_the_hidden_truth():
    w = small(30)
    cands = np.broadcast_to(np.arange(500), (30, 500))
    r = expected_response(w, np.arange(30), cands)
    q, b = w.catalogue.quality, w.catalogue.bait
    # bait raises clicks and lowers completion; quality raises completion and satisfaction
    assert np.corrcoef(r["p_click"].mean(0), b)[0, 1] > 0.3
    assert np.corrcoef(r["completion"].mean(0), q - b)[0, 1] > 0.8
    assert np.corrcoef(r["ds"].mean(0), q - b)[0, 1] > 0.8
    assert np.corrcoef(w.catalogue.thumb, b)[0, 1] > 0.6  # the observable proxy carries signal


def test_heterogeneous_bait_susceptibility_is_optional():
    assert (small(20).users.bait_sus == 1).all()
    sus = small(2000, bait_sus_sd=0.5).users.bait_sus
    assert sus.std() > 0.3 and abs(sus.mean() - 1) < 0.05
