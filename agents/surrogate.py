"""A surrogate from offline proxies to online effect, learnt from the journal's concluded rollouts.

Bayesian linear regression (conjugate Gaussian prior on the weights, noise variance estimated from
the residuals) on a small feature vector per hypothesis: the component (one-hot), the offline gain in
noise floors, and the loss-independent proxies top_watch_share, long_watch_corr, top_completion_share,
return_corr, like_corr, top_like_share and auc (how well the model ranks clicks), all but the component
standardised over the concluded rollouts (`Surrogate`).
The prior is centred on what is known before any rollout: the watch proxies (the share of each user's held-out
watch seconds, and of the watched fraction of each video, in the rows the model would put in that user's slates;
the correlation of the model's scores with long watches) and the like proxies (the scores' correlation with
likes, and the share of each user's likes in those rows: the logs' trace of satisfaction, which brings users
back) are the offline proxies of the north star, so their weights start positive, watching and satisfaction
with half each, and the surrogate starts at that mix's ranking: which transfers
best differs between worlds, and the rollouts decide. return_corr and auc have no known direction: a model
that ranks clicks better may bring minutes (a world whose clicks lead to watching) or bait that costs them
(one whose users leave when unsatisfied); the rollouts say which. The components share an intercept and
differ from it by shrunk deviations. How wide the prior is, is not fixed: the surrogate averages the model over a
grid of prior scales, weighted by each one's evidence (PRIOR_SCALES). It predicts each candidate's online
improvement of the north star (its effect, with the sign flipped for a north star to minimize: the proxies' prior
says what predicts a better north star, not a larger one) with a standard deviation, and the online agent ranks
by an upper confidence bound on the improvement (mean + kappa * sd) so that uncertain candidates get explored.

Why linear and Bayesian: a handful of concluded rollouts is all there will be for a long time; the
posterior's width says honestly how little that is, and it shrinks as rollouts conclude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from cambrian.agents.journal import Hypothesis

COMPONENTS = ("optimizer", "architecture", "reward", "training")
# auc joined on 6 Dec 2026 (thirteenth session), its prior centred on 0: click skill is the offline trace of
# what clickbait changes online (the first days' minutes: on the wary world's four seeds auc's gain ranks the
# first three days' online minutes at 0.75-0.93, the 21 days' at -0.15 to -0.30; on the hooked world it ranks
# them positively). Replayed, one fit on 8 ranking the rest (200 draws), on every stored run: calibrated full
# size seeds 0-3 mean 0.795 -> 0.838 (3 -> 4 of 4 at 0.7 or more), wary 0-3 0.567 -> 0.589, hooked 0-1
# 0.334 -> 0.571, quick size ten seeds 0.564 -> 0.627 (bench/results/fidelity-surrogate-auc-replay.json).
# Held out (full size, never run before): calibrated seed 4 0.851 -> 0.893, wary seeds 4 / 5 0.552 / 0.471 ->
# 0.598 / 0.500.
# top_completion_share and top_like_share joined on 7 Dec 2026 (seventeenth session), each in its kind: the
# watch and like proxies read at the top of each user's ranking (what the user's slates would hold), not over all
# held-out rows. Every stored full-size fidelity run retrained offline and re-read (`cambrian bench run fidelity
# --replay), one fit on 8 ranking the rest (200 draws): wary seeds 0-5
# 0.577 -> 0.671 (0.814 / 0.632 / 0.629 / 0.541 / 0.734 / 0.672), calibrated seeds 0-4 0.849 -> 0.836 (5 of 5
# >= 0.7 both); wary seed 6, held out (trained and served after the choice): 0.513 -> 0.648. bench/README.md
# (fidelity) lists every variant tried.
PROXIES = ("top_watch_share", "long_watch_corr", "top_completion_share", "return_corr", "like_corr",
           "top_like_share", "auc")
TARGET = "effect"  # the relative north-star effect recorded by record_outcome
MIN_HISTORY = 4  # concluded rollouts before the surrogate is trusted to rank


def feature_vector(component: str, floors: float, proxies: Mapping[str, float]) -> np.ndarray:
    """The surrogate's inputs: the component (one-hot), the offline gain in noise floors, the proxies.
    One definition for the online agent and the fidelity benchmark. A proxy the hypothesis has no reading of
    (a journal from before the proxy existed, data that does not declare it) is NaN: the surrogate counts it as
    no evidence (its standardised input 0), never as a reading of 0."""
    onehot = [1.0 if component == c else 0.0 for c in COMPONENTS]
    return np.array([*onehot, float(np.clip(floors, -10, 10)), *(float(proxies.get(m, math.nan)) for m in PROXIES)])


def features(h: Hypothesis) -> np.ndarray:
    floors = h.gain / h.noise_floor if h.gain is not None and h.noise_floor else 0.0
    return feature_vector(h.component, floors, {m: float(h.offline[m].mean) for m in PROXIES if m in h.offline})


def observed_effect(h: Hypothesis) -> float | None:
    value = h.online.get(TARGET) if h.online.get("matured") else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sign(direction: str) -> int:
    """+1 when the north star is to be maximized, -1 when minimized: `sign * effect` is its improvement."""
    return -1 if direction == "minimize" else 1


@dataclass
class Prediction:
    mean: float
    sd: float


class BayesianLinear:
    """y = w.x + e, w ~ N(prior_mean, diag(prior_sd^2)), e ~ N(0, s^2); s^2 from the residuals (floored), on the
    degrees of freedom the fit leaves (n minus the effective number of parameters, the hat matrix's trace:
    with as many weights as rollouts the raw residuals are near zero and would let the data drown the prior)."""

    def __init__(self, prior_sd: float | np.ndarray = 0.05, noise_floor_sd: float = 0.002,
                 prior_mean: np.ndarray | None = None):
        self.prior_sd, self.noise_floor_sd, self.prior_mean = prior_sd, noise_floor_sd, prior_mean
        self.mean: np.ndarray | None = None
        self.cov: np.ndarray | None = None
        self.noise_var = float(np.max(prior_sd)) ** 2
        self.log_evidence = -math.inf  # log p(y | x, prior) at the fitted noise: how well this prior explains y

    def fit(self, x: np.ndarray, y: np.ndarray) -> "BayesianLinear":
        x, y = np.atleast_2d(x), np.asarray(y, dtype=float)
        d = x.shape[1]
        sd = np.broadcast_to(np.asarray(self.prior_sd, dtype=float), (d,))
        m0 = np.zeros(d) if self.prior_mean is None else np.asarray(self.prior_mean, dtype=float)
        p0 = np.diag(1 / sd**2)
        noise = max(float(np.var(y)) if y.size > 1 else float(sd.max()) ** 2, self.noise_floor_sd**2)
        for _ in range(3):  # empirical Bayes on the noise: refit with the residual variance
            cov = np.linalg.inv(p0 + x.T @ x / noise)
            mean = cov @ (p0 @ m0 + x.T @ y / noise)
            resid = y - x @ mean
            dof = max(y.size - float(np.trace(x @ cov @ x.T)) / noise, 1.0)
            noise = max(float(resid @ resid) / dof, self.noise_floor_sd**2)
        self.mean, self.cov, self.noise_var = mean, cov, noise
        # y ~ N(x m0, noise I + x S0 x'): the weights integrated out
        marginal = noise * np.eye(y.size) + (x * sd**2) @ x.T
        r = y - x @ m0
        self.log_evidence = -0.5 * float(r @ np.linalg.solve(marginal, r) + np.linalg.slogdet(marginal)[1]
                                         + y.size * math.log(2 * math.pi))
        return self

    def predict(self, x: np.ndarray) -> list[Prediction]:
        if self.mean is None or self.cov is None:
            raise RuntimeError("fit() the surrogate first")
        x = np.atleast_2d(x)
        mu = x @ self.mean
        var = np.einsum("nd,de,ne->n", x, self.cov, x) + self.noise_var
        return [Prediction(float(m), float(math.sqrt(v))) for m, v in zip(mu, var)]


# The prior's direction, known before any rollout: both loss-independent proxies of the north star count
# positively, equally, with the strength one proxy had alone split between them (weights 0.5/√2 each, so the
# prior's direction has length 0.5 and 8 rollouts that say otherwise still overturn it; weight on the
# standardised input, in units of the effects' size, and its prior sd in the same units). Which one transfers
# better is the world's: on the calibrated world's quick size top_watch_share ranks online effects better
# (mean Spearman 0.60 vs 0.41 over 10 seeds), at its full size long_watch_corr (0.71 and 0.88 vs 0.55 and 0.65
# on seeds 0 and 1); both on the fidelity benchmark's held-out sets of 11. Both directions (3 Dec 2026, replayed
# on those stored runs): one fit on 8 ranking the other 11, full size 0.65/0.77 -> 0.70/0.82, quick size
# 0.614 -> 0.591 (top_watch_share alone before). Held out (4 Dec 2026, full size, world seeds 2 and 3 never run
# before): 0.80 and 0.64, mean of seeds 0-3 0.743 against the best raw proxy's 0.756
# (bench/results/fidelity-full-seeds0-1-2-3.json).
# like_corr joined them on 6 Dec 2026, the three weighted equally: likes are the logs' trace of satisfaction, which
# the watch proxies miss where users leave when unsatisfied (the wary world). One fit on 8 ranking the rest, full
# size: calibrated seeds 0 / 1 0.690 / 0.846 -> 0.786 / 0.921, wary seed 0 (25 candidates) 0.187 -> 0.567
# (bench/results/fidelity-full-seed{0,1}-8e096d9.json, fidelity-wary-seed0.json; bench/README.md).
# Per kind of evidence, not per metric (6 Dec 2026, twelfth session): top_watch_share and long_watch_corr are two
# readings of one thing, long watches (their gains correlate 0.6-0.9 over every world's candidates), so weighing the
# three equally counted watching twice and satisfaction once. Each kind now has half the direction: like_corr twice
# each watch proxy's weight, the length 0.5 as before. One fit on 8 ranking the rest, replayed on the stored runs
# that chose it (200 draws; wary seed 0's floors read by its declared reward objective like_corr, as its loop's
# gate reads them): calibrated seeds 0-3 0.786 / 0.921 / 0.807 / 0.672 -> 0.793 / 0.924 / 0.799 / 0.665, wary
# seed 0 0.594 -> 0.626, hooked seeds 0 / 1 0.180 / 0.367 -> 0.220 / 0.448; wary seeds 1-3 held out
# (bench/README.md, fidelity). Rollouts that never read like_corr keep the watch proxies' 0.5/√2 each (the quick
# size's ten stored seeds, without like_corr: 0.564, as when they were run; 0.550 had the unread kind kept its share).
KINDS = (("top_watch_share", "long_watch_corr", "top_completion_share"), ("like_corr", "top_like_share"))  # watching; satisfaction
PRIOR_LENGTH, PRIOR_SD = 0.5, 0.25


def prior_direction(read: Iterable[str] = tuple(m for kind in KINDS for m in kind)) -> dict[str, tuple[float, float]]:
    """Each proxy's prior (mean, sd) among those the rollouts `read`: the kinds with a reading share the direction's
    length equally, a kind's proxies its share. A kind no rollout read gives its share to the others (a journal from
    before like_corr, or data that does not declare it, keeps the watch proxies at 0.5/√2 each, as before it)."""
    read = set(read)
    kinds = [[m for m in kind if m in read] for kind in KINDS]
    weights = {m: 1 / len(kind) for kind in kinds if kind for m in kind}
    norm = math.hypot(*weights.values()) if weights else 1.0
    return {m: (PRIOR_LENGTH * w / norm, PRIOR_SD) for m, w in weights.items()}


COMPONENT_SPREAD = 0.25  # prior sd of a component's deviation from the shared intercept, in the same units
OTHER_SD = 0.25  # prior sd of an input's weight with no known direction (centred on 0), in the same units
# Both are narrow on purpose: with 8 rollouts and 10 weights a wide prior lets a few points' noise set the
# component intercepts and the undirected slopes, and the fit drifts from the proxy it started at. OTHER_SD 0.5
# -> 0.25 (3 Dec 2026): over 10 world seeds of the fidelity benchmark, one fit on 8 ranking the other 11 rose on
# 9 seeds and fell on 1 (mean Spearman 0.569 -> 0.614; raw top_watch_share on the same sets 0.604;
# bench/results/fidelity-seeds0-9.json).
CLIP = 2.0  # standardised inputs beyond ±2 sd count as 2 sd: one outlier among 8 rollouts must not set the slope
# How far the rollouts may overturn the prior is not fixed but weighed (7 Dec 2026, eighteenth session): the surrogate
# is an average of the same model with every slope's and component's prior sd scaled by each of these (a log-uniform
# grid over a factor of 64), weighted by each one's evidence (marginal likelihood). The prior's direction alone
# ranks the wary world best and the hooked world worst; a fixed scale picks a world. Chosen on the stored rows, one
# fit on 8 ranking the rest (200 draws), before wary seed 7 was read: wary seeds 0-6 0.667 -> 0.705, calibrated 0-4
# 0.836 -> 0.828 (5 of 5 >= 0.7 both), hooked 0-1 0.666 -> 0.642; a fixed scale of 0.5 read 0.706 / 0.822 / 0.633,
# the prior alone 0.723 / 0.738 / 0.515 (bench/README.md, fidelity, lists every variant). Held out, wary seed 7
# went the other way, 0.620 -> 0.527 (its like proxies rank nothing); over wary seeds 0-7 0.661 -> 0.683, kept by a
# rule written before seed 7 was read (its mean over 0-7 at least the old one's, calibrated still 5 of 5).
PRIOR_SCALES = tuple(2.0**k for k in range(-3, 4))


class Surrogate:
    """BayesianLinear on scale-free inputs: a shared intercept, the component's deviation from it (one-hot,
    shrunk), and the proxies and floors standardised over the fitted rollouts (clipped at ±CLIP); every prior
    sd is in units of the effects' own size (root mean square). The proxies' weights named in prior_direction()
    have their prior centred there, the others on 0. With raw inputs a fixed prior ties the answer to units:
    long_watch_corr moves by hundredths, floors by units, so N(0, 0.05²) left the proxies almost no weight.
    One such model per prior scale (PRIOR_SCALES), averaged by evidence: `weights` says how much each counts."""

    def __init__(self, n_onehot: int = len(COMPONENTS), min_prior_sd: float = 0.002,
                 names: tuple[str, ...] = ("floors", *PROXIES), prior_scales: tuple[float, ...] = PRIOR_SCALES):
        self.n_onehot, self.min_prior_sd, self.names = n_onehot, min_prior_sd, names
        self.prior_scales = prior_scales  # not `scale`, the inputs' standardisation
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.models: list[BayesianLinear] = []
        self.weights = np.zeros(0)

    def _x(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=float))
        z = np.clip((x[:, self.n_onehot:] - self.center) / self.scale, -CLIP, CLIP)
        return np.hstack([np.ones((x.shape[0], 1)), x[:, :self.n_onehot], np.nan_to_num(z, nan=0.0)])

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Surrogate":
        x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
        if x.shape[1] != self.n_onehot + len(self.names):
            raise ValueError(f"expected {self.n_onehot} one-hot columns and {len(self.names)} inputs "
                             f"({', '.join(self.names)}), got {x.shape[1]} columns")
        # centre and scale over the readings there are; an input no rollout read is centred on 0 with scale 1
        unread = np.isnan(x[:, self.n_onehot:]).all(0)
        rest = np.where(unread, 0.0, x[:, self.n_onehot:])
        self.center = np.nanmean(rest, 0)
        sd = np.nanstd(rest, 0)
        self.scale = np.where(sd > 0, sd, 1.0)
        size = max(float(np.sqrt(np.mean(y**2))) if y.size else 0.0, self.min_prior_sd)
        known = prior_direction(n for n, no in zip(self.names, unread) if not no)
        direction = [known.get(n, (0.0, OTHER_SD)) for n in self.names]
        mean = np.array([0.0] * (1 + self.n_onehot) + [m for m, _ in direction]) * size
        slopes = np.array([COMPONENT_SPREAD] * self.n_onehot + [s for _, s in direction]) * size
        z = self._x(x)
        self.models = [BayesianLinear(prior_sd=np.concatenate([[size], k * slopes]), prior_mean=mean).fit(z, y)
                       for k in self.prior_scales]
        evidence = np.array([m.log_evidence for m in self.models])
        self.weights = np.exp(evidence - evidence.max())
        self.weights /= self.weights.sum()
        return self

    def predict(self, x: np.ndarray) -> list[Prediction]:
        """The evidence-weighted mixture's mean and sd (within and between the scales' predictions)."""
        if not self.models:
            raise RuntimeError("fit() the surrogate first")
        z = self._x(x)
        each = [m.predict(z) for m in self.models]
        mu = np.array([[p.mean for p in ps] for ps in each])
        var = np.array([[p.sd**2 for p in ps] for ps in each])
        mean = self.weights @ mu
        sd = np.sqrt(np.maximum(self.weights @ (var + mu**2) - mean**2, 0.0))
        return [Prediction(float(m), float(s)) for m, s in zip(mean, sd)]


def fit_journal(hypotheses: Iterable[Hypothesis], min_history: int = MIN_HISTORY, better: int = 1
                ) -> Surrogate | None:
    """The surrogate fitted on every concluded rollout with a recorded effect; None below min_history. It learns
    the north star's improvement, `better` (sign()) times the effect: the prior's positive proxy weights say a
    proxy's gain predicts a better north star, which for one to minimize is a fall."""
    done = [(features(h), better * y) for h in hypotheses if (y := observed_effect(h)) is not None]
    if len(done) < min_history:
        return None
    return Surrogate().fit(np.stack([f for f, _ in done]), np.array([y for _, y in done]))


def surrogate_rank(pool: list[Hypothesis], model: Surrogate, k: int, kappa: float = 1.0, better: int = 1
                   ) -> tuple[list[str], dict[str, str], dict[str, dict[str, float]]]:
    """Top k by measured improvement where a rollout concluded, else by the optimistic bound mean + kappa * sd of
    the predicted improvement (`model` from fit_journal with the same `better`). Reasons and predictions are in
    the north star's own effect (better * improvement), as the Rollout measures it and the report sets beside it."""
    preds = dict(zip((h.id for h in pool), model.predict(np.stack([features(h) for h in pool]))))

    def value(h: Hypothesis) -> float:
        seen = observed_effect(h)
        return better * seen if seen is not None else preds[h.id].mean + kappa * preds[h.id].sd

    ordered = sorted(pool, key=lambda h: (-value(h), h.created_at))[:k]
    reasons = {}
    for h in ordered:
        p, seen = preds[h.id], observed_effect(h)
        reasons[h.id] = (f"measured online effect {seen:+.4f}" if seen is not None else
                         f"surrogate predicts online effect {better * p.mean:+.4f} ± {p.sd:.4f} "
                         f"(optimistic bound {better * value(h):+.4f})")
    predictions = {h.id: {"mean": round(better * p.mean, 6), "sd": round(p.sd, 6)} for h in pool for p in [preds[h.id]]}
    return [h.id for h in ordered], reasons, predictions
