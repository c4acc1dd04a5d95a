"""Offline proxy metrics: AUC, loss-independent rank correlations with logged signals and per-user top shares, as
the data's declaration names them (trainer/schema.py `proxies`; the world's: auc, long_watch_corr, return_corr,
like_corr, top_watch_share, top_completion_share, top_like_share)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cambrian.trainer.schema import USER_COLUMN, Proxy


def scored_loss(kind: str, logits: np.ndarray, label: np.ndarray, weight: np.ndarray) -> float:
    """val_loss: the training loss (trainer/gate.py weighted_loss, in torch) on held-out predictions, in numpy
    and float64, so that the scorer needs no torch: the weighted mean of binary cross-entropy with logits
    (`bce`, in its stable form) or of the squared error (`mse`)."""
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (logits, label, weight))
    per_row = (np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))) if kind == "bce" else (x - y) ** 2
    return float((w * per_row).sum() / max(float(w.sum()), 1e-12))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average (scipy.stats.rankdata's default), by pandas, which the scorer has
    loaded already: scipy.stats alone costs a slot's worker about 0.8 CPU seconds to import."""
    return pd.Series(np.asarray(values)).rank(method="average").to_numpy(dtype=np.float64)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula (ties get average ranks)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rank_corr(scores: np.ndarray, signal: np.ndarray) -> float:
    """Spearman correlation (Pearson's of the average ranks); 0 when either side is constant (no information
    either way)."""
    if np.ptp(scores) == 0 or np.ptp(signal) == 0:
        return 0.0
    return float(np.corrcoef(average_ranks(scores), average_ranks(signal))[0, 1])


def top_share(scores: np.ndarray, signal: np.ndarray, users: np.ndarray, top: float) -> float:
    """Per user: the share of the user's signal in the user's highest-scored ceil(top * rows) rows (ties broken
    by row order, the same for every model); the mean over users whose signal sums to more than 0 (0 when none
    does). In [0, 1]; a model that ranks at random gets about `top`."""
    if (signal < 0).any():
        raise ValueError("top_share needs a signal that is never negative (a share of it)")
    order = np.lexsort((-scores, users))  # by user, then score descending (lexsort is stable)
    u, s = users[order], signal[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, len(u)])
    rank = np.arange(len(u)) - np.repeat(starts, counts)
    keep = rank < np.repeat(np.ceil(top * counts).astype(np.int64), counts)
    total = np.add.reduceat(s, starts) if len(u) else np.zeros(0)
    shown = np.add.reduceat(np.where(keep, s, 0.0), starts) if len(u) else np.zeros(0)
    has = total > 0
    return float(np.mean(shown[has] / total[has])) if has.any() else 0.0


def proxy_metrics(scores: np.ndarray, signals, proxies: tuple[Proxy, ...]) -> dict[str, float]:
    """Every declared proxy of the held-out scores; `signals` holds each proxy's signal by name and the rows'
    users (trainer/data.py)."""
    out = {}
    for proxy in proxies:
        signal = signals[proxy.name].to_numpy(np.float64)
        if proxy.kind == "auc":
            out[proxy.name] = auc(scores, signal)
        elif proxy.kind == "top_share":
            out[proxy.name] = top_share(scores, signal, signals[USER_COLUMN].to_numpy(np.int64), proxy.top)
        else:
            out[proxy.name] = rank_corr(scores, signal)
    return out


def uninformative_proxies(signals, proxies: tuple[Proxy, ...]) -> dict[str, str]:
    """Proxies that carry no information on these held-out rows, each with the reason, read from the data so any
    declaration gets it: a signal that is constant (MovieLens-like logs have no day after their last), or a rank
    correlation whose signal is exactly the declared label (it only repeats what the AUC measures)."""
    reasons: dict[str, str] = {}
    label = signals["label"].to_numpy(np.float64)
    for proxy in proxies:
        signal = signals[proxy.name].to_numpy(np.float64)
        if not len(signal):
            continue
        if np.ptp(signal) == 0:
            always = "is undefined" if proxy.kind == "auc" else "is always 0"
            reasons[proxy.name] = (f"its signal ({proxy.signal}) is {signal[0]:g} for every held-out row, so "
                                   f"{proxy.name} {always}")
        elif proxy.kind != "auc" and np.array_equal(signal, label):
            reasons[proxy.name] = (f"its signal ({proxy.signal}) equals the label on every held-out row, so "
                                   f"{proxy.name} only repeats the label (the AUC)")
    return reasons
