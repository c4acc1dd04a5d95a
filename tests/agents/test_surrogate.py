"""The surrogate from offline proxies to online effect (Bayesian linear) and its use in top-K selection."""

import math

import numpy as np
import pytest

from cambrian.agents.journal import Hypothesis, Score
from cambrian.agents.online import OnlineAgent
from cambrian.agents.surrogate import MIN_HISTORY, PROXIES, BayesianLinear, features, fit_journal

COL = {m: 5 + i for i, m in enumerate(PROXIES)}  # a feature vector's column of each proxy: after 4 one-hot and floors


def hyp(hid, component, lw, floors, effect=None, created=0.0):
    online = {"decision": "promote" if (effect or 0) > 0 else "rollback", "effect": effect, "matured": True} \
        if effect is not None else {}
    return Hypothesis(id=hid, generation=1, persona=component, component=component, category="explore",
                      phase="Retired" if effect is not None else "Scored", verdict="better", gain=floors * 0.01,
                      noise_floor=0.01, primary_metric="val_loss",
                      offline={"top_watch_share": Score.of([lw]), "long_watch_corr": Score.of([0.0]),
                               "return_corr": Score.of([0.0]), "like_corr": Score.of([0.0]), "auc": Score.of([0.0])},
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


# Concluded rollouts: what moved minutes was the top-watch-share proxy, not the offline gain in noise floors.
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
    assert list(f[:4]) == [0.0, 0.0, 1.0, 0.0] and f[4] == pytest.approx(2.0)
    assert f[COL["top_watch_share"]] == pytest.approx(0.07) and len(f) == 5 + len(PROXIES)
    read = [COL[m] for m in ("long_watch_corr", "return_corr", "like_corr", "auc")]
    assert list(f[read]) == [0.0] * 4
    # the hypothesis has no reading of the top shares of completion and likes: no evidence, not 0
    assert np.isnan(f[[COL["top_completion_share"], COL["top_like_share"]]]).all()


def test_a_proxy_a_rollout_never_read_is_no_evidence_not_a_reading_of_zero():
    """Journals from before top_watch_share existed: their rollouts have no reading of it. Those rollouts (here
    the older ones, whose effects happen to be higher) must not set its slope; read as 0 (far below every real
    share, about 0.075) they made it steeply negative and the surrogate ranked the new candidates backwards."""
    from scipy import stats

    def old(hid, effect):
        h = hyp(hid, "optimizer", 0.0, 1.0, effect=effect)
        h.offline.pop("top_watch_share")
        return h

    f = features(old("o", 0.01))
    unread = [COL[m] for m in ("top_watch_share", "top_completion_share", "top_like_share")]
    assert np.isnan(f[unread]).all() and np.isfinite(np.delete(f, unread)).all()
    history = [old(f"o{i}", 0.03 + 0.002 * i) for i in range(5)]
    history += [hyp(f"n{i}", "optimizer", 0.07 + 0.005 * i, 1.0, effect=0.1 * (0.005 * i)) for i in range(4)]
    pool = [hyp(f"p{i}", "optimizer", 0.065 + 0.004 * i, 1.0, created=i) for i in range(6)]
    sel = OnlineAgent(k=6).select([*history, *pool])
    assert sel.ranked_by == "surrogate"
    means = [sel.predictions[f"p{i}"]["mean"] for i in range(6)]
    assert stats.spearmanr(means, range(6)).statistic > 0.9


def test_the_surrogate_learns_a_proxy_whatever_its_units():
    """The online effect follows a proxy that moves by hundredths (as top_watch_share does) while the floors are
    noise of a few units: leave-one-out, the standardised surrogate orders the candidates by the proxy; the same
    Bayesian linear model on raw inputs with a fixed prior leaves the small proxy almost no weight."""
    from scipy import stats

    from cambrian.agents.surrogate import Surrogate

    rng = np.random.default_rng(11)
    n = 12
    lw = rng.normal(0, 0.02, n)
    x = np.c_[np.eye(4)[rng.integers(0, 4, n)], rng.normal(0, 3, n), lw, rng.normal(0, 0.02, (n, len(PROXIES) - 1))]
    y = 0.5 * lw + rng.normal(0, 0.001, n)

    def loo(make):
        pred = [make().fit(np.delete(x, i, 0), np.delete(y, i)).predict(x[i:i + 1])[0].mean for i in range(n)]
        return stats.spearmanr(pred, y).statistic

    # about 0.77 (0.83 with the prior's scale fixed at 1: the evidence still gives narrow scales some weight at 11
    # rollouts), against about -0.7 on raw inputs
    assert loo(Surrogate) > 0.7
    assert loo(Surrogate) > loo(BayesianLinear) + 0.2


def _pool(rng, n):
    """n candidates: a component, floors (noise of a few units), every proxy N(0, 0.02); and their top_watch_share."""
    x = np.c_[np.eye(4)[rng.integers(0, 4, n)], rng.normal(0, 3, n), rng.normal(0, 0.02, (n, len(PROXIES)))]
    return x, x[:, COL["top_watch_share"]]


def test_the_prior_starts_at_the_north_stars_proxies_and_the_data_can_overturn_it():
    """Before the rollouts say anything (effects that are pure noise), the surrogate orders new candidates by
    the north star's offline proxies together, per kind of evidence: watching (top_watch_share, long_watch_corr and
    top_completion_share, three readings of how much is watched, half together) and satisfaction (like_corr and
    top_like_share, half together); not by one of them, nor by return_corr; once enough rollouts show the opposite
    direction, it follows the data."""
    from scipy import stats

    from cambrian.agents.surrogate import KINDS, Surrogate

    rho = {k: [] for k in ("together", "watching", "satisfaction", "one", "like", "rc", "auc")}
    for seed in range(20):  # 8 noise-only rollouts pull the fit about at random: the prior shows on average
        rng = np.random.default_rng(seed)
        x, lw = _pool(rng, 8)
        probe, probe_lw = _pool(rng, 30)
        noise_only = Surrogate().fit(x, rng.normal(0, 0.01, 8))
        pred = [p.mean for p in noise_only.predict(probe)]
        watching, satisfaction = (probe[:, [COL[m] for m in kind]].mean(1) for kind in KINDS)  # each input sd 0.02
        for name, v in (("together", watching + satisfaction), ("watching", watching), ("satisfaction", satisfaction),
                        ("one", probe_lw), ("like", probe[:, COL["like_corr"]]), ("rc", probe[:, COL["return_corr"]]),
                        ("auc", probe[:, COL["auc"]])):
            rho[name].append(stats.spearmanr(pred, v).statistic)
    med = {k: np.median(v) for k, v in rho.items()}
    assert med["together"] > 0.5 and med["together"] > med["one"] + 0.1
    # each kind ranks far better than one of its proxies (about 0.5 and 0.7 against 0.3), and a like proxy, one of
    # two in its kind, weighs more than a watch proxy, one of three (about 0.39 against 0.31)
    assert min(med["watching"], med["satisfaction"]) > med["one"] + 0.15 and med["like"] > med["one"]
    assert abs(np.mean(rho["rc"])) < 0.2 and abs(np.mean(rho["auc"])) < 0.2  # no prior direction for these
    x40, lw40 = _pool(rng, 40)
    against = Surrogate().fit(x40, -0.5 * lw40 + rng.normal(0, 0.001, 40))
    pred = [p.mean for p in against.predict(probe)]
    assert stats.spearmanr(pred, probe_lw).statistic < -0.7
    # and it stays uncertain: every prediction has a spread, wider far from the fitted rollouts
    far = probe.copy()
    far[:, 5] = 10.0  # clipped at 2 sd: a far input cannot claim a huge effect
    assert all(p.sd > 0 for p in noise_only.predict(probe))
    assert max(abs(p.mean) for p in noise_only.predict(far)) < 10 * 0.02


def test_the_prior_shares_its_length_among_the_kinds_the_rollouts_read():
    """Watching (three proxies) and satisfaction (two) have half the prior's direction each; a kind no rollout read
    gives its share to the other, so a journal from before like_corr weighs the watch proxies as it did then, and
    a proxy no rollout read gives its share to the others of its kind."""
    from cambrian.agents.surrogate import KINDS, PRIOR_LENGTH, prior_direction

    both = {m: w for m, (w, _) in prior_direction().items()}
    watching, satisfaction = KINDS
    assert sum(both[m] for m in watching) == pytest.approx(sum(both[m] for m in satisfaction))
    assert both["like_corr"] == pytest.approx(1.5 * both["top_watch_share"]) == pytest.approx(1.5 * both["long_watch_corr"])
    assert math.hypot(*both.values()) == pytest.approx(PRIOR_LENGTH)
    before_top_shares = {m: w for m, (w, _) in prior_direction(["top_watch_share", "long_watch_corr", "like_corr"]).items()}
    assert before_top_shares["like_corr"] == pytest.approx(2 * before_top_shares["top_watch_share"])
    watch_only = prior_direction(["top_watch_share", "long_watch_corr", "return_corr"])
    assert set(watch_only) == {"top_watch_share", "long_watch_corr"}  # return_corr has no known direction
    assert watch_only["top_watch_share"][0] == pytest.approx(PRIOR_LENGTH / math.sqrt(2))
    assert prior_direction(["like_corr"])["like_corr"][0] == pytest.approx(PRIOR_LENGTH)
    assert prior_direction([]) == {}


def test_the_rollouts_set_the_sign_of_click_skill():
    """auc (how well the model ranks clicks) has no prior direction: where the rollouts show that click skill
    brings minutes (users who click go on watching) the surrogate ranks by it, where they show that it costs
    minutes (bait that users leave) it ranks against it, from the same 10 rollouts' proxies."""
    from scipy import stats

    from cambrian.agents.surrogate import Surrogate

    for sign in (1.0, -1.0):
        rhos = []
        for seed in range(30):
            rng = np.random.default_rng(seed)
            x, _ = _pool(rng, 10)
            probe, _ = _pool(rng, 30)
            fit = Surrogate().fit(x, sign * 0.5 * x[:, COL["auc"]] + rng.normal(0, 0.002, 10))
            rhos.append(stats.spearmanr([p.mean for p in fit.predict(probe)], sign * probe[:, COL["auc"]]).statistic)
        # about 0.79 and 0.80 over these 30 pools (after 8 rollouts 0.44 and 0.61: the five proxies with a prior
        # direction are pure noise here, and the evidence still favours the prior's narrow scales)
        assert np.median(rhos) > 0.65, (sign, rhos)


def test_the_evidence_decides_how_far_the_rollouts_move_the_prior():
    """The surrogate averages one model per prior scale by evidence: rollouts that are pure noise keep it near the
    prior (its weight on the narrow scales), many rollouts that follow an input with no prior direction widen it;
    its predictions' spread counts the scales' disagreement."""
    from cambrian.agents.surrogate import PRIOR_SCALES, Surrogate

    log_scale = np.log2(PRIOR_SCALES)
    noise, signal, spread = [], [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        x, _ = _pool(rng, 8)
        fit = Surrogate().fit(x, rng.normal(0, 0.01, 8))
        noise.append(fit.weights @ log_scale)
        probe, _ = _pool(rng, 5)
        mixed = fit.predict(probe)
        alone = [m.predict(fit._x(probe)) for m in fit.models]
        within = np.sqrt(fit.weights @ np.array([[p.sd**2 for p in ps] for ps in alone]))
        spread.append(all(p.sd >= w - 1e-12 for p, w in zip(mixed, within)))
        x, _ = _pool(rng, 24)
        signal.append(Surrogate().fit(x, 0.5 * x[:, COL["auc"]] + rng.normal(0, 0.002, 24)).weights @ log_scale)
    assert np.median(noise) < -0.5 and np.median(signal) > 0.0  # about -1.4 and +0.5 (log2 of the scale)
    assert all(spread)
    single = Surrogate(prior_scales=(1.0,)).fit(*_pool(np.random.default_rng(0), 8))
    assert single.weights.tolist() == [1.0]


def test_the_noise_estimate_uses_the_degrees_of_freedom_left():
    """As many weights as rollouts: the residuals are near zero, but the noise estimate must not be (it would
    let 8 points drown any prior); with the residual dof it stays near the data's spread."""
    rng = np.random.default_rng(2)
    x = np.c_[np.ones(8), rng.normal(size=(8, 7))]
    y = rng.normal(0, 0.01, 8)
    m = BayesianLinear(prior_sd=0.01).fit(x, y)
    assert m.noise_var > 0.5 * np.var(y)  # counting n - 1 dof instead gave a fifth of it


def test_the_surrogate_rejects_a_feature_vector_of_the_wrong_width():
    from cambrian.agents.surrogate import Surrogate

    with pytest.raises(ValueError, match="one-hot columns"):
        Surrogate().fit(np.zeros((5, 6)), np.zeros(5))


def test_a_north_star_to_minimize_ranks_the_predicted_fall_first():
    """churn_rate, to minimize: 8 rollouts in which each +0.01 of top_watch_share raised churn by 1%. The surrogate
    ranked the largest predicted effect first, so it started the candidate expected to raise churn the most; it
    must rank by the improvement (the fall) and still report its prediction as churn's own effect."""
    def churn(hid, tws, effect=None, created=0.0):
        h = hyp(hid, "optimizer", tws, 1.0, effect=effect, created=created)
        h.online = {"decision": "rollback", "effect": effect, "matured": True} if effect is not None else {}
        return h

    history = [churn(f"h{i}", 0.30 + 0.01 * i, effect=0.01 * i) for i in range(8)]
    pool = [churn("raises", 0.40, created=1), churn("lowers", 0.20, created=2)]
    sel = OnlineAgent(k=1, direction="minimize").select([*history, *pool])
    assert sel.ranked_by == "surrogate" and sel.start == ["lowers"]
    p = sel.predictions
    assert p["lowers"]["mean"] < 0 < p["raises"]["mean"]  # in churn's own units: a predicted fall is negative
    assert f"predicts online effect {p['lowers']['mean']:+.4f}" in sel.reasons["lowers"]
    # the same journal with a north star to maximize starts the other one
    assert OnlineAgent(k=1).select([*history, *pool]).start == ["raises"]


def test_the_prior_predicts_a_fall_of_a_north_star_to_minimize_from_better_proxies():
    """The prior's positive proxy weights say what makes the north star better: with rollouts that say nothing
    (noise), a candidate with more watching predicts a fall of a metric to minimize, not a rise; the optimistic
    bound (the exploration bonus) is on the fall too."""
    history = [hyp(f"h{i}", "optimizer", tws, 1.0, effect=effect)  # effects uncorrelated with the proxy
               for i, (tws, effect) in enumerate([(t, e) for t in (0.04, 0.06) for e in (0.01, -0.01)] * 2)]
    pool = [hyp("more", "optimizer", 0.08, 1.0, created=1), hyp("less", "optimizer", 0.02, 1.0, created=2)]
    down = OnlineAgent(k=1, direction="minimize").select([*history, *pool])
    up = OnlineAgent(k=1).select([*history, *pool])
    assert down.start == up.start == ["more"]
    assert down.predictions["more"]["mean"] < down.predictions["less"]["mean"]
    assert up.predictions["more"]["mean"] > up.predictions["less"]["mean"]
    bound = float(down.reasons["more"].split("optimistic bound ")[1].rstrip(")"))
    assert bound == pytest.approx(down.predictions["more"]["mean"] - down.predictions["more"]["sd"], abs=2e-4)
