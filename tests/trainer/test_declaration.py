"""What a declaration says training learns and how it is judged (issue 17): its label and proxies are SQL over the
declared signals, parsed by sqlglot and checked before anything is read; the world's declaration reproduces the
world's labels and proxies as they were hard-coded before."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from cambrian.errors import ConfigError, GateError
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import check_reward_sql, load_dataset
from cambrian.trainer.metrics import auc, proxy_metrics, rank_corr, uninformative_proxies
from cambrian.trainer.schema import MOVIELENS_100K, WORLD, Proxy, load_schema


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cambrian.cli", *args], capture_output=True, text=True, timeout=120)


def _with(**changes) -> dict:
    return {**WORLD.model_dump(mode="json", exclude_defaults=True), **changes}


@pytest.mark.parametrize(("signal", "message"), [
    ("impressions.watch_secs >= 60", "impressions.watch_secs is not a declared column it may read"),
    ("items.length_min", "items.length_min is not a declared column it may read"),  # a feature, not a signal
    ("watch_seconds >=", "not SQL"),
    ("AVG(impressions.click)", "aggregate or window"),
    ("(SELECT 1)", "not a query"),
    ("impressions.click IN (SELECT click FROM impressions)", "not a query"),
    ("read_parquet('/etc/passwd')", "is not allowed"),
    ("impressions.click + :threshold", "parameter :threshold is unknown"),
    ("impressions.click; DROP TABLE users", "exactly one expression"),
])
def test_a_bad_proxy_expression_is_refused_in_one_line_with_exit_code_2(world_dir, tmp_path, signal, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(proxies=[{"name": "mine", "signal": signal}])))
    with pytest.raises(ConfigError, match="proxies.*mine") as err:
        load_schema(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    result = cli("data", "check", str(world_dir), "--schema", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) <= 2  # the error and its hint


def test_a_label_expression_reads_only_declared_signals():
    bad = _with(label={"column": "impressions.click", "min": 0, "max": 1, "expr": "impressions.position < 3"})
    with pytest.raises(ValueError, match="label.expr: impressions.position is not a declared column"):
        WORLD.model_validate(bad).compiled()
    assert set(WORLD.compiled()) == {"label.expr", "proxies[auc].signal", "proxies[long_watch_corr].signal",
                                     "proxies[return_corr].signal", "proxies[like_corr].signal",
                                     "proxies[top_watch_share].signal", "proxies[top_completion_share].signal",
                                     "proxies[top_like_share].signal"}
    assert MOVIELENS_100K.compiled()["label.expr"].refs == ("ratings.rating",)
    with pytest.raises(ValueError, match="the name 'val_loss' is taken"):
        WORLD.model_validate(_with(proxies=[{"name": "val_loss", "signal": "impressions.click"}]))


def test_a_reward_naming_an_undeclared_column_is_refused_in_one_line():
    check_reward_sql("CAST(click AS DOUBLE) * completion", "label", WORLD)
    check_reward_sql("CAST(rating >= 4 AS DOUBLE) * (age > 30)", "label", MOVIELENS_100K)
    with pytest.raises(GateError, match="unknown column 'click'") as err:
        check_reward_sql("CAST(click AS DOUBLE)", "label", MOVIELENS_100K)
    assert "movielens_100k" in str(err.value) and "\n" not in str(err.value)
    assert "rating" in err.value.hint


def test_the_world_declaration_gives_the_labels_and_proxies_the_world_had(world_dir):
    """The proxies as they were computed before the declaration named them, from the world's files with pandas:
    click AUC, long watches (watch_seconds >= long_watch_seconds), the user's next-day return, likes."""
    config = ModelConfig.model_validate({"reward": {"long_watch_seconds": 45.0},
                                         "training": {"validation_days": 1, "max_train_examples": None}})
    data = load_dataset(world_dir, config)
    imp = pd.read_parquet(world_dir / "impressions.parquet")
    days = pd.read_parquet(world_dir / "user_days.parquet")
    held = imp[imp["day"] == imp["day"].max()].merge(days[["day", "user_id", "returned_next_day"]],
                                                     on=["day", "user_id"], how="left")
    held["returned_next_day"] = held["returned_next_day"].fillna(0)
    held = held.sort_values(["user_id", "item_id"], kind="stable")  # the held-out order (tests/trainer/test_heldout_order.py)
    assert len(data.val) == len(held) and len(data.train) == len(imp) - len(held)
    np.testing.assert_array_equal(data.val.features["user"], held["user_id"])
    np.testing.assert_array_equal(data.val.features["item"], held["item_id"])
    np.testing.assert_array_equal(data.val.label, held["click"].astype(np.float32))
    scores = np.random.default_rng(0).normal(size=len(held)) + held["click"].to_numpy()
    expected = {"auc": auc(scores, held["click"].to_numpy()),
                "long_watch_corr": rank_corr(scores, (held["watch_seconds"] >= 45.0).to_numpy(np.float64)),
                "return_corr": rank_corr(scores, held["returned_next_day"].to_numpy(np.float64)),
                "like_corr": rank_corr(scores, held["like"].to_numpy(np.float64))}
    got = proxy_metrics(scores, data.val.signals, data.schema.proxies)
    top = {m: got.pop(m) for m in ("top_watch_share", "top_completion_share", "top_like_share")}
    assert got == expected and len(set(got.values())) == 4
    # each user's share of the held-out signal (watch seconds, completion, likes) in the user's top 6% of rows by
    # score, by pandas
    held["score"] = scores
    for name, column in (("top_watch_share", "watch_seconds"), ("top_completion_share", "completion"),
                         ("top_like_share", "like")):
        shares = []
        for _, rows in held.groupby("user_id"):
            signal = rows[column].astype(np.float64)  # completion is stored as float32; sum as the scorer does
            total = signal.sum()
            if total > 0:
                k = int(np.ceil(0.06 * len(rows)))
                shares.append(signal[rows.nlargest(k, "score").index].sum() / total)
        assert top[name] == pytest.approx(np.mean(shares), rel=1e-9), name
    assert len(set(top.values())) == 3


def test_top_share_is_each_users_signal_in_the_users_top_rows():
    from cambrian.trainer.metrics import top_share

    users = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    signal = np.array([10.0, 0, 30, 0, 5, 5, 0, 0, 0, 0])  # user 2 watched nothing: left out of the mean
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.5, 0.1, 0.9, 0.2, 0.3, 0.4])
    # top half: user 0 keeps rows 0 and 3 (10 of 40), user 1 rows 6 and 4 (5 of 10)
    assert top_share(scores, signal, users, 0.5) == pytest.approx((0.25 + 0.5) / 2)
    assert top_share(signal, signal, users, 0.5) == 1.0  # ranked by the signal itself: all of it
    assert top_share(-signal, signal, users, 0.25) == 0.0  # one row each, the least watched
    # the same rows in another order give the same answer (grouping does not assume sorted users)
    perm = np.random.default_rng(0).permutation(len(users))
    assert top_share(scores[perm], signal[perm], users[perm], 0.5) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="never negative"):
        top_share(scores, signal - 1, users, 0.5)


@pytest.mark.parametrize("proxy", [{"name": "t", "kind": "top_share", "signal": "x"},
                                   {"name": "t", "kind": "rank_corr", "signal": "x", "top": 0.1},
                                   {"name": "t", "kind": "top_share", "signal": "x", "top": 0.0},
                                   {"name": "__user", "signal": "x"}])
def test_a_top_share_proxy_needs_its_fraction_and_only_it_does(proxy):
    with pytest.raises(ValueError):
        if proxy["name"] == "__user":
            WORLD.model_validate(_with(proxies=[*_with()["proxies"], proxy]))
        else:
            Proxy.model_validate(proxy)


def test_uninformative_proxies_are_read_from_the_data_for_any_declaration():
    proxies = (Proxy(name="auc", kind="auc", signal="x"), Proxy(name="same", signal="x"), Proxy(name="flat", signal="y"),
               Proxy(name="fine", signal="z"))
    signals = pd.DataFrame({"auc": [0, 1, 1.0], "same": [0, 1, 1.0], "flat": [2, 2, 2.0], "fine": [3, 1, 2.0],
                            "label": [0, 1, 1.0]})
    reasons = uninformative_proxies(signals, proxies)
    assert set(reasons) == {"same", "flat"}
    assert "equals the label" in reasons["same"] and "(y) is 2 for every held-out row" in reasons["flat"]


def test_a_top_share_of_a_signal_that_goes_negative_is_refused_in_one_line(world_dir, tmp_path):
    path = tmp_path / "neg.yaml"
    path.write_text(yaml.safe_dump(_with(proxies=[{"name": "mine", "kind": "top_share", "top": 0.1,
                                                   "signal": "impressions.watch_seconds - 30"}])))
    config = ModelConfig.model_validate({"training": {"validation_days": 1, "max_train_examples": 2000}})
    with pytest.raises(ConfigError, match=r"proxy mine .* is negative for \d+ held-out rows") as err:
        load_dataset(world_dir, config, schema=str(path))
    assert "\n" not in str(err.value)


def test_the_scorers_ranks_auc_and_spearman_are_scipys():
    """The scorer ranks with pandas (it never imports scipy); ties, constant sides and a reversed signal must read
    as scipy's rankdata, spearmanr and Mann-Whitney U (AUC = U / (positives x negatives)) would."""
    from scipy import stats

    from cambrian.trainer.metrics import average_ranks

    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=4000), 1)  # many ties
    signal = np.round(scores + rng.normal(size=4000), 0)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-scores))).astype(np.float64)
    np.testing.assert_array_equal(average_ranks(scores), stats.rankdata(scores))
    assert rank_corr(scores, signal) == pytest.approx(stats.spearmanr(scores, signal).statistic, abs=1e-12)
    assert rank_corr(scores, -signal) == pytest.approx(-rank_corr(scores, signal), abs=1e-12)
    assert rank_corr(scores, np.ones(4000)) == 0.0
    pos, neg = scores[labels == 1], scores[labels == 0]
    assert auc(scores, labels) == pytest.approx(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)), abs=1e-12)
