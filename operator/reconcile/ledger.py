"""An Evolution's spend on its Hypotheses as a running total that only grows (pure, both platforms).

Summed from the Hypotheses that exist now, the spend went down when finished ones were deleted: the loop then
proposed and trained again past spec.agent.budgets. status.spendLedger keeps what no deletion takes back:

- closed: the spend of Hypotheses folded in, plus the last-seen spend of open ones that disappeared;
- closing: Hypotheses folded in that do not carry the mark yet (annotation A_SPEND_COUNTED, written at the next
  reconcile once this status is persisted, then forgotten: marks.py), with the spend folded;
- open: the last-seen spend of Hypotheses that may still spend (not trained yet, or training).

A Hypothesis done spending is folded once: its spend goes into `closed` and it gets the mark. What it spends
beyond its mark (it trained again after a spec change) is counted, and folded again once it is done. The total is
`closed` plus, for each Hypothesis that exists, its spend beyond what is folded (at least its last-seen open
figure): the same objects read again count nothing twice, and a restart reads it all back from the status and the
marks. The status holds only what is on its way or spending, not one entry per Hypothesis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from cambrian.operator import api
from cambrian.operator.reconcile.observations import HypothesisView, Spend

SPENDING = (None, "Proposed", "Validated", "Training")  # phases that may still start a run
MAX_CLOSING = 256  # folds per reconcile while marks are on their way; the rest wait, counted, for the next
MAX_OPEN = 1024  # open entries; past it a spending Hypothesis is counted while it exists, not after
NOTHING = Spend()


@dataclass(frozen=True)
class Seen:
    """One Hypothesis of the Evolution as it is now."""

    name: str
    phase: str | None
    spent: Spend
    counted: tuple[str, Spend] | None = None  # its mark: (the Evolution's uid, the spend folded)


def seen(h: HypothesisView) -> Seen:
    return Seen(h.name, h.phase, h.spent, h.counted)


def plus(a: Spend, b: Spend) -> Spend:
    return Spend(a.tokens + b.tokens, a.dollars + b.dollars, a.gpu_hours + b.gpu_hours, a.evaluations + b.evaluations)


def beyond(a: Spend, b: Spend) -> Spend:
    """What `a` has more than `b`, per figure (never below zero)."""
    return Spend(max(a.tokens - b.tokens, 0), max(a.dollars - b.dollars, 0.0), max(a.gpu_hours - b.gpu_hours, 0.0),
                 max(a.evaluations - b.evaluations, 0))


def most(a: Spend, b: Spend) -> Spend:
    return Spend(max(a.tokens, b.tokens), max(a.dollars, b.dollars), max(a.gpu_hours, b.gpu_hours),
                 max(a.evaluations, b.evaluations))


def total_of(spends: Iterable[Spend]) -> Spend:
    out = NOTHING
    for s in spends:
        out = plus(out, s)
    return out


def mark_value(evolution_uid: str, s: Spend) -> str:
    return json.dumps({"evolution": evolution_uid, **_wire(s)}, sort_keys=True, separators=(",", ":"))


def parse_mark(value: str | None) -> tuple[str, Spend] | None:
    """A_SPEND_COUNTED's (uid, spend); None when absent or unreadable (the Hypothesis then counts in full)."""
    if not value:
        return None
    try:
        d = json.loads(value)  # read by hand: every view of a Hypothesis reads it (10,000 per step)
        return str(d["evolution"]), Spend(int(d.get("tokens") or 0), float(d.get("dollars") or 0),
                                          float(d.get("gpuHours") or 0), int(d.get("evaluations") or 0))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def update(uid: str, ledger: api.SpendLedger, hypotheses: Iterable[Seen]
           ) -> tuple[api.SpendLedger, Spend, list[tuple[str, str]]]:
    """The ledger after seeing `hypotheses` (all the Evolution's that exist), the spend of its Hypotheses, deleted
    ones included, and the marks to write now, (Hypothesis, A_SPEND_COUNTED value): those the persisted `ledger`
    holds in `closing` with the same figures (a mark is never written before the fold it records is saved)."""
    closed, closing, opened, spent, persisted = _fold(uid, ledger, hypotheses)
    marks = [(n, mark_value(uid, s)) for n, s in sorted(persisted.items()) if closing[n] == s]
    new = api.SpendLedger(closed=_api(closed), closing={n: _api(s) for n, s in closing.items()},
                          open={n: _api(s) for n, s in opened.items()})
    return new, spent, marks


def total(uid: str, ledger: api.SpendLedger, hypotheses: Iterable[Seen]) -> Spend:
    """update's total alone."""
    return _fold(uid, ledger, hypotheses)[3]


def _fold(uid: str, ledger: api.SpendLedger, hypotheses: Iterable[Seen]):
    """(closed, closing, open, total, the closing entries the persisted ledger holds still to be marked)."""
    now = {h.name: h for h in sorted(hypotheses, key=lambda h: h.name)}
    last_open = {n: _spend(s) for n, s in ledger.open.items()}
    closed = total_of(s for n, s in last_open.items() if n not in now)  # deleted while spending: spent for good
    closed = plus(_spend(ledger.closed), closed)
    closing = {n: _spend(s) for n, s in ledger.closing.items() if n in now and _mark(uid, now[n]) != _spend(s)}
    persisted = dict(closing)
    opened: dict[str, Spend] = {}
    unfolded = NOTHING
    for h in now.values():
        if h.name not in closing and h.name not in last_open and (
                h.spent == NOTHING or (h.counted is not None and h.counted[1] == h.spent and h.counted[0] == uid)):
            continue  # nothing spent, or all of it folded (most of 10,000 Hypotheses): the fast path
        base = closing[h.name] if h.name in closing else (_mark(uid, h) or NOTHING)
        extra = most(beyond(h.spent, base), last_open.get(h.name, NOTHING))
        if extra == NOTHING:
            continue
        if h.phase not in SPENDING and (h.name in closing or len(closing) < MAX_CLOSING):
            closed, closing[h.name] = plus(closed, extra), plus(base, extra)
            continue
        unfolded = plus(unfolded, extra)
        if len(opened) < MAX_OPEN:
            opened[h.name] = extra
    return closed, closing, opened, plus(closed, unfolded), persisted


def carried(total: Spend, hypotheses: Iterable[Seen]) -> Spend:
    """What the Evolution spent on Hypotheses beyond what those that exist show now (deleted ones). Rounded: the
    same figures summed in another order differ in the last bits, which are no spend."""
    d = beyond(total, total_of(h.spent for h in hypotheses))
    return Spend(d.tokens, round(d.dollars, 9), round(d.gpu_hours, 9), d.evaluations)


def _mark(uid: str, h: Seen) -> Spend | None:
    """The spend its mark says this Evolution folded (a mark of an earlier Evolution of the same name is not)."""
    return h.counted[1] if h.counted is not None and h.counted[0] == uid else None


def _spend(s: api.Spend) -> Spend:
    return Spend(tokens=s.tokens, dollars=s.dollars, gpu_hours=s.gpu_hours, evaluations=s.evaluations)


def _api(s: Spend) -> api.Spend:
    return api.Spend(tokens=s.tokens, dollars=s.dollars, gpu_hours=s.gpu_hours, evaluations=s.evaluations)


def _wire(s: Spend) -> Mapping[str, float]:
    return _api(s).wire()
