"""Persona scheduling, pure (both platforms): how one wake-up's proposals are shared among the personas.

`fixed` asks every persona for spec.agent.proposalsPerWakeup proposals, in the order of spec.agent.personas
(each persona's proposals together), as the loop always did. `yield` shares the same budget by each persona's
measured yield: the offline gain its trained hypotheses reached, in noise floors (gain / noiseFloor, as the
core judged them; a loss counts as 0), per evaluation they cost (training runs, confirmations included; a
hypothesis that failed in training costs its runs and yields 0). Every persona keeps at least
`explorationFloor` proposals, so a persona that had a bad start is still tried; with no measurement yet the
split is equal. Proposals are trained in the order the Hypotheses are named, so the wake-up interleaves the
personas, highest yield first: every persona's first idea is trained before any persona's second, instead of
one persona's whole batch before the next persona's first (the fixed order had put the reward persona, whose
changes won the search benchmark, behind six other evaluations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from cambrian.operator.reconcile.observations import HypothesisView

CATEGORIES = ("explore", "exploit", "innovate")
TRAINED = ("Scored", "Live", "Launched", "Retired")


@dataclass(frozen=True)
class PersonaYield:
    persona: str
    evaluations: int  # training runs of its judged or failed hypotheses
    floors: float  # Σ max(gain / noiseFloor, 0) over its judged hypotheses

    @property
    def value(self) -> float | None:
        """Gain per evaluation in noise floors; None before anything of the persona was evaluated."""
        return self.floors / self.evaluations if self.evaluations else None


@dataclass(frozen=True)
class Share:
    persona: str
    proposals: int
    quotas: tuple[tuple[str, int], ...]  # the persona's proposals by category (explore, exploit, innovate)
    yield_: float | None  # None: not measured yet
    evaluations: int = 0


@dataclass(frozen=True)
class Schedule:
    policy: str
    budget: int
    shares: tuple[Share, ...]  # training priority order: highest yield first
    reason: str

    def allocation(self) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
        """What the ProposeHypotheses action carries: (persona, its category quotas), in priority order."""
        return tuple((s.persona, s.quotas) for s in self.shares if s.proposals > 0)

    def order(self) -> tuple[str, ...]:
        """The persona of each proposal in training order: `fixed` keeps each persona's proposals together
        (the listed order), `yield` interleaves them (see interleave)."""
        counts = [(s.persona, s.proposals) for s in self.shares]
        if self.policy == "fixed":
            return tuple(p for p, n in counts for _ in range(n))
        return tuple(interleave(counts))


def component_persona(component: str) -> str:
    """The persona that owns a component of Φ (the optimizer persona also owns `training`)."""
    return {"training": "optimizer"}.get(component, component)


def persona_of(h: HypothesisView) -> str:
    """The persona that proposed it (spec.origin.persona), else the persona owning its component."""
    return h.persona or component_persona(h.component)


def measure(personas: Sequence[str], hypotheses: Iterable[HypothesisView]) -> dict[str, PersonaYield]:
    """Each persona's evaluations and gain in noise floors so far. Rejected and statically failed
    hypotheses cost no training run and are not counted; one still training is counted once judged."""
    evals = {p: 0 for p in personas}
    floors = {p: 0.0 for p in personas}
    for h in hypotheses:
        p = persona_of(h)
        if p not in evals:
            continue
        runs = max(h.evaluations, h.attempts)
        if h.phase in TRAINED:  # judged; one without a gain (its metric missing) cost its runs for nothing
            evals[p] += max(runs, 1)
            if h.gain is not None and h.noise_floor:
                floors[p] += max(h.gain / h.noise_floor, 0.0)
        elif h.phase == "Failed" and runs > 0:
            evals[p] += runs
    return {p: PersonaYield(p, evals[p], floors[p]) for p in personas}


def split(n: int, weights: Sequence[float]) -> list[int]:
    """n whole items in proportion to weights (largest remainder; ties to the earlier one)."""
    total = sum(weights)
    if n <= 0 or not weights:
        return [0] * len(weights)
    if total <= 0:
        weights, total = [1.0] * len(weights), float(len(weights))
    exact = [n * w / total for w in weights]
    out = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: n - sum(out)]:
        out[i] += 1
    return out


def category_quotas(n: int, quotas: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """A persona's n proposals divided among the categories in the proportions of spec.agent.quotas."""
    return tuple(zip(CATEGORIES, split(n, [float(quotas.get(c, 0)) for c in CATEGORIES])))


def schedule(policy: str, personas: Sequence[str], per_persona: int, quotas: Mapping[str, int],
             hypotheses: Iterable[HypothesisView], *, floor: int = 1, budget: int | None = None,
             wakeup: int = 1) -> Schedule:
    """The wake-up's proposals per persona. `budget`: the wake-up's total (default personas × per_persona);
    `floor`: the fewest proposals a persona gets while the budget allows; `wakeup` rotates who comes first
    among personas that cannot be told apart (no measurement, equal yields), so none is always first."""
    personas = list(personas)
    total = len(personas) * per_persona if budget is None else max(0, budget)
    if policy == "fixed":
        counts = split(total, [float(per_persona)] * len(personas))
        shares = tuple(Share(p, c, category_quotas(c, quotas), None) for p, c in zip(personas, counts))
        return Schedule("fixed", total, shares, f"fixed: {per_persona} per persona in the listed order")
    measured = measure(personas, hypotheses)
    known = [y.value for y in measured.values() if y.value is not None]
    prior = sum(known) / len(known) if known else 0.0  # an unmeasured persona is assumed average
    value = {p: (measured[p].value if measured[p].value is not None else prior) for p in personas}
    rot = (wakeup - 1) % max(len(personas), 1)
    tie = {p: (i - rot) % len(personas) for i, p in enumerate(personas)}
    ranked = sorted(personas, key=lambda p: (-value[p], tie[p]))
    floors = [0] * len(ranked)
    left = total
    for i in range(len(ranked)):  # the exploration floor first, best first while the budget lasts
        floors[i] = min(floor, left)
        left -= floors[i]
    extra = split(left, [value[p] for p in ranked]) if any(value[p] > 0 for p in ranked) else split(left, [1.0] * len(ranked))
    counts = [a + b for a, b in zip(floors, extra)]
    shares = tuple(Share(p, c, category_quotas(c, quotas), measured[p].value, measured[p].evaluations)
                   for p, c in zip(ranked, counts))
    if not known:
        reason = "yield: nothing evaluated yet, equal split"
    else:
        parts = [f"{p} {measured[p].floors:.2f} floors / {measured[p].evaluations} evaluations" for p in ranked]
        reason = f"yield (floor {floor} each): " + "; ".join(parts)
    return Schedule("yield", total, shares, reason)


def interleave(counts: Sequence[tuple[str, int]]) -> list[str]:
    """The training order of a wake-up's proposals: round-robin over the personas in priority order
    (their first proposals, then their second ...). Returns one persona name per slot."""
    left = dict(counts)
    out: list[str] = []
    while any(left.values()):
        for p, _ in counts:
            if left[p] > 0:
                out.append(p)
                left[p] -= 1
    return out


def summary(s: Schedule) -> str:
    """One line for the journal: who gets how many, and why."""
    alloc = ", ".join(f"{sh.persona} {sh.proposals}" + (f" (yield {sh.yield_:.3g})" if sh.yield_ is not None else "")
                      for sh in s.shares)
    return f"{s.budget} proposal(s): {alloc}; {s.reason}"
