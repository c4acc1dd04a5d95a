"""Offline proxy metrics: AUC and loss-independent rank correlations with logged signals."""

from __future__ import annotations

import numpy as np
from scipy import stats


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula (ties get average ranks)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rank_corr(scores: np.ndarray, signal: np.ndarray) -> float:
    """Spearman correlation; 0 when either side is constant (no information either way)."""
    if np.ptp(scores) == 0 or np.ptp(signal) == 0:
        return 0.0
    return float(stats.spearmanr(scores, signal).statistic)


def proxy_metrics(scores: np.ndarray, signals, long_watch_seconds: float) -> dict[str, float]:
    """The loss-independent surrogates the reward persona is scored on (docs/CONTRACTS.md)."""
    long_watch = (signals["watch_seconds"].to_numpy() >= long_watch_seconds).astype(np.float64)
    return {
        "auc": auc(scores, signals["click"].to_numpy()),
        "long_watch_corr": rank_corr(scores, long_watch),
        "return_corr": rank_corr(scores, signals["returned_next_day"].to_numpy(np.float64)),
        "like_corr": rank_corr(scores, signals["like"].to_numpy(np.float64)),
    }


def uninformative_proxies(signals, long_watch_seconds: float) -> dict[str, str]:
    """Proxies that carry no information on these held-out rows, each with the reason (read from the data, so
    any data set gets it: MovieLens-100k has no day after its last, and its watch time is derived from clicks)."""
    reasons: dict[str, str] = {}
    returned = signals["returned_next_day"].to_numpy(np.float64)
    if len(returned) and np.ptp(returned) == 0:
        reasons["return_corr"] = (f"returned_next_day is {returned[0]:g} for every held-out impression (the log has "
                                  "no next day to observe after the held-out days), so return_corr is always 0")
    click = signals["click"].to_numpy().astype(bool)
    long_watch = signals["watch_seconds"].to_numpy() >= long_watch_seconds
    if len(click) and (long_watch == click).all():
        reasons["long_watch_corr"] = (f"a long watch (watch_seconds >= {long_watch_seconds:g}) is exactly a click on "
                                      "every held-out impression, so long_watch_corr only repeats the click signal (auc)")
    like = signals["like"].to_numpy(np.float64)
    if len(like) and np.ptp(like) == 0:
        reasons["like_corr"] = f"like is {like[0]:g} for every held-out impression, so like_corr is always 0"
    return reasons
