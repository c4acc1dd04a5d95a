"""When the offline agents wake up next: the cadence, backed off while wake-ups create nothing.

A proposer that keeps failing (an endpoint answering 500, a wrong key, answers that never validate) would
otherwise be asked again every `spec.cadence.offline`, forever: in a cluster a call every 5 minutes that
spends and fails, locally thousands of simulated wake-ups. Like a controller's requeue back-off, each
wake-up in a row that created no Hypothesis doubles the wait before the next, up to MAX_FACTOR cadences;
the first wake-up that creates one resets it, and so does a spec change (a fixed provider is asked at once).
Pure: counted from the Hypotheses' `spec.origin.wakeup`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

from cambrian.operator.api import EvolutionStatus, duration_seconds
from cambrian.operator.reconcile.observations import HypothesisView

MAX_FACTOR = 64  # 5m cadence: at most 5h20m between wake-ups of a proposer that keeps failing


def empty_streak(hypotheses: Iterable[HypothesisView], last_wakeup: int, counts_after: int = 0) -> int:
    """How many of the latest wake-ups (up to `last_wakeup`, after `counts_after`) in a row created no Hypothesis."""
    produced = {h.wakeup for h in hypotheses if h.wakeup}
    streak = 0
    while last_wakeup - streak > counts_after and last_wakeup - streak not in produced:
        streak += 1
    return streak


def restart_backoff(st: EvolutionStatus, now: datetime) -> None:
    """The spec changed: the wake-ups so far no longer count, and one that was backed off is due now."""
    st.backoff_counts_after = st.counters.wakeups
    if st.counters.empty_wakeups:
        st.counters.empty_wakeups = 0
        st.next_wakeup_at = now


def factor(streak: int) -> int:
    """Cadences between the last wake-up and the next: 1, then 2, 4, ... MAX_FACTOR."""
    return min(2 ** min(streak, 16), MAX_FACTOR)


def next_due(last_wakeup_at: datetime, cadence: str, streak: int) -> datetime:
    return last_wakeup_at + timedelta(seconds=duration_seconds(cadence) * factor(streak))
