"""The surrogate from offline proxies to online effect (Bayesian linear) and its use in top-K selection."""

import numpy as np
import pytest

from cambrian.agents.journal import Hypothesis, Score
from cambrian.agents.online import OnlineAgent
from cambrian.agents.surrogate import MIN_HISTORY, BayesianLinear, features, fit_journal


def hyp(hid, component, lw, floors, effect=None, created=0.0):
    online = {"decision": "promote" if (effect or 0) > 0 else "rollback", "effect": effect, "matured": True} \
        if effect is not None else {}
    return Hypothesis(id=hid, generation=1, persona=component, component=component, category="explore",
                      phase="Retired" if effect is not None else "Scored", verdict="better", gain=floors * 0.01,
                      noise_floor=0.01, primary_metric="val_loss", offline={"long_watch_corr": Score.of([lw]),
                                                                           "return_corr": Score.of([0.0])},
                      online=online, created_at=created)


def test_bayesian_linear_recovers_a_slope_and_grows_surer_with_data():
    rng = np.random.default_rng(0)
    x = np.c_[np.ones(40), rng.normal(size=40)]
    y = 0.01 + 0.02 * x[:, 1] + 0.001 * rng.normal(size=40)
    small = BayesianLinear().fit(x[:5], y[:5])
    large = BayesianLinear().fit(x, y)
    assert large.mean[1] == pytest.approx(0.02, abs=0.002)
    probe = np.array([[1.0, 2.0]])
    assert large.predict(probe)[0].sd < small.predict(probe)[0].sd
    with pytest.raises(RuntimeError):
        BayesianLinear().predict(probe)


# Concluded rollouts: what moved minutes was the long-watch proxy, not the offline gain in noise floors.
HISTORY = [hyp(f"h{i}", c, lw, fl, effect=0.2 * lw) for i, (c, lw, fl) in enumerate([
    ("reward", 0.10, 1.0), ("reward", 0.05, 1.5), ("optimizer", 0.0, 4.0), ("training", -0.01, 6.0),
    ("architecture", 0.02, 3.0), ("reward", -0.05, 2.0)])]


def test_too_little_history_keeps_the_builtin_rule():
    assert fit_journal(HISTORY[:MIN_HISTORY - 1]) is None
    pool = [hyp("big_gain", "training", 0.0, 8.0), hyp("long_watch", "reward", 0.08, 1.2)]
    sel = OnlineAgent(k=1).select([*HISTORY[:MIN_HISTORY - 1], *pool])
    assert sel.ranked_by == "builtin" and sel.ranking == ["big_gain"] and not sel.predictions


def test_surrogate_ranks_by_predicted_online_effect_once_rollouts_concluded():
    pool = [hyp("big_gain", "training", 0.0, 8.0, created=1), hyp("long_watch", "reward", 0.08, 1.2, created=2)]
    sel = OnlineAgent(k=1).select([*HISTORY, *pool])
    assert sel.ranked_by == "surrogate" and sel.ranking == ["long_watch"]
    assert "surrogate predicts" in sel.reasons["long_watch"]
    p = sel.predictions
    assert p["long_watch"]["mean"] > p["big_gain"]["mean"] and all(v["sd"] > 0 for v in p.values())
    # without the surrogate the same journal is ranked by offline noise floors
    assert OnlineAgent(k=1, surrogate=False).select([*HISTORY, *pool]).ranking == ["big_gain"]


def test_features_are_component_one_hot_noise_floors_and_proxies():
    f = features(hyp("x", "reward", 0.07, 2.0))
    assert list(f[:4]) == [0.0, 0.0, 1.0, 0.0] and f[4] == pytest.approx(2.0) and f[5] == pytest.approx(0.07)


def test_the_surrogate_learns_a_proxy_whatever_its_units():
    """The online effect follows a proxy that moves by hundredths (as long_watch_corr does) while the floors are
    noise of a few units: leave-one-out, the standardised surrogate orders the candidates by the proxy; the same
    Bayesian linear model on raw inputs with a fixed prior leaves the small proxy almost no weight."""
    from scipy import stats

    from cambrian.agents.surrogate import Surrogate

    rng = np.random.default_rng(11)
    n = 12
    lw = rng.normal(0, 0.02, n)
    x = np.c_[np.eye(4)[rng.integers(0, 4, n)], rng.normal(0, 3, n), lw, rng.normal(0, 0.02, n)]
    y = 0.5 * lw + rng.normal(0, 0.001, n)

    def loo(make):
        pred = [make().fit(np.delete(x, i, 0), np.delete(y, i)).predict(x[i:i + 1])[0].mean for i in range(n)]
        return stats.spearmanr(pred, y).statistic

    assert loo(Surrogate) > 0.8
    assert loo(Surrogate) > loo(BayesianLinear) + 0.2
