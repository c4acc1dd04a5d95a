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
