"""An Evolution's spend is a running total that only grows (reconcile/ledger.py): deleting its Hypotheses gives no
budget back. Before, the spend was summed from the Hypotheses that existed, so deleting finished ones refunded
theirs and the loop proposed and trained again past spec.agent.budgets."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from cambrian.operator import api
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import ledger as L
from cambrian.operator.reconcile import views
from cambrian.operator.reconcile.actions import A_SPEND_COUNTED, CreateTrainingJob, Mark, ProposeHypotheses
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import JobObservation, Spend

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
META = Meta("evo", "uid-evo", "ns", 1)
SPEC = api.EvolutionSpec.model_validate({
    "objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100}},
    "cadence": {"offline": "5m", "online": "1d"}, "agent": {"budgets": {"evaluations": 6}}})


def hypothesis(name: str, phase: str, attempts: int, gpu: float = 0.0, tokens: int = 0) -> dict:
    ann = {views.A_TOKENS: str(tokens), views.A_DOLLARS: "0.25"} if tokens else {}
    return {"metadata": {"name": name, "annotations": ann, "creationTimestamp": "2026-03-01T00:00:00Z"},
            "spec": {"evolutionRef": {"name": "evo"}, "component": "optimizer"},
            "status": {"phase": phase, "attempts": attempts, "gpuHours": gpu}}


class Evolution:
    """The Evolution's steps as loop.py takes them: the spend of the objects that exist, the pure core, its marks
    written on the Hypotheses, the status persisted (as the API server stores it: a restart reads only that)."""

    def __init__(self):
        self.status = api.EvolutionStatus()
        self.hyps: dict[str, dict] = {}
        self.now = T0
        first = self.step()
        done = [JobObservation(a.name, "Succeeded", 0, metrics={"val_loss": 0.5}, bundle_uri=f"pvc://x/{a.name}")
                for a in first.actions if isinstance(a, CreateTrainingJob)]
        self.step(done)
        assert self.status.champion.bundle and self.status.spend.evaluations == 3  # the baseline's seeds

    def step(self, jobs=()):
        self.now += timedelta(minutes=1)
        objs = list(self.hyps.values())
        spent = views.spend(objs, baseline_attempts=E.evolution_runs(SPEC, self.status))
        r = E.reconcile(META, SPEC, self.status, [views.hypothesis_view(h) for h in objs], [], list(jobs), spent,
                        self.now)
        for a in r.actions:
            if isinstance(a, Mark) and a.name in self.hyps:
                self.hyps[a.name]["metadata"]["annotations"][a.annotation] = a.value
        self.status = api.parse_status("Evolution", json.loads(json.dumps(r.status.wire())))
        return r


def test_deleting_finished_hypotheses_gives_no_budget_back():
    evo = Evolution()
    evo.hyps = {"h1": hypothesis("h1", "Scored", 1, 0.5, tokens=100), "h2": hypothesis("h2", "Failed", 2, 0.25)}
    first = evo.step()
    assert first.status.phase == "BudgetExhausted"
    want = Spend(tokens=100, dollars=0.25, gpu_hours=0.75, evaluations=6)

    def spend():
        s = evo.status.spend
        return Spend(s.tokens, s.dollars, s.gpu_hours, s.evaluations)

    assert spend() == want and set(evo.status.spend_ledger.closing) == {"h1", "h2"}
    assert not any(A_SPEND_COUNTED in h["metadata"]["annotations"] for h in evo.hyps.values())  # status first
    marked = evo.step()  # the fold is saved: the marks are written
    assert sorted(a.name for a in marked.actions if isinstance(a, Mark)) == ["h1", "h2"] and spend() == want
    evo.step()  # the marks are seen: the status forgets the names, the total stays
    assert evo.status.spend_ledger.closing == {} and evo.status.spend_ledger.open == {} and spend() == want
    evo.hyps.clear()  # `kubectl delete hypotheses --all`
    later = evo.step()
    assert spend() == want and later.status.phase == "BudgetExhausted"
    assert not [a for a in later.actions if isinstance(a, ProposeHypotheses)]
    evo.now += timedelta(hours=1)  # wake-ups are due: none comes
    assert not [a for a in evo.step().actions if isinstance(a, ProposeHypotheses)] and spend() == want


def test_a_hypothesis_deleted_while_training_or_before_its_mark_counts_once():
    evo = Evolution()
    evo.hyps = {"t": hypothesis("t", "Training", 1), "s": hypothesis("s", "Scored", 1)}
    evo.step()
    assert set(evo.status.spend_ledger.open) == {"t"} and set(evo.status.spend_ledger.closing) == {"s"}
    assert evo.status.spend.evaluations == 5 and evo.status.phase == "Running"
    evo.hyps["t"]["status"]["attempts"] = 2  # a retry: counted once, from its last-seen figure on
    evo.step()
    assert evo.status.spend.evaluations == 6
    del evo.hyps["t"], evo.hyps["s"]["metadata"]["annotations"][A_SPEND_COUNTED]  # gone; s before its mark landed
    evo.step()
    del evo.hyps["s"]
    evo.step()
    assert evo.status.spend.evaluations == 6 and evo.status.spend_ledger.open == {}
    assert evo.status.spend_ledger.closing == {} and evo.status.phase == "BudgetExhausted"


def test_reads_again_and_restarts_count_nothing_twice_and_a_mark_of_another_evolution_is_not_ours():
    evo = Evolution()
    evo.hyps = {"h": hypothesis("h", "Scored", 1, 0.5)}
    persisted = evo.status
    seen = [L.seen(views.hypothesis_view(h)) for h in evo.hyps.values()]
    once = L.update(META.uid, persisted.spend_ledger, seen)
    assert L.update(META.uid, persisted.spend_ledger, seen) == once  # a replay from the same status
    again = L.update(META.uid, once[0], seen)  # the next read, before the mark lands
    assert once[2] == [] and again[1] == once[1] == Spend(gpu_hours=0.5, evaluations=1)
    assert [n for n, _ in again[2]] == ["h"] and again[0] == once[0]
    marked = L.seen(views.hypothesis_view({**evo.hyps["h"], "metadata": {
        "name": "h", "annotations": {A_SPEND_COUNTED: again[2][0][1]}}}))
    settled = L.update(META.uid, again[0], [marked])
    assert settled[1] == once[1] and settled[0].closing == {} and settled[2] == []
    assert L.update(META.uid, settled[0], [marked])[1] == once[1]  # a restart reads the status and the mark
    # a Hypothesis marked by an earlier Evolution of the same name counts in full for this one
    assert L.update("another-uid", api.SpendLedger(), [marked])[1] == Spend(gpu_hours=0.5, evaluations=1)


def fold_rounds(n: int, rounds: int) -> tuple[api.SpendLedger, dict, list[int], int]:
    """`n` finished Hypotheses found at once (an Evolution from before the ledger), reconciled `rounds` times with
    the marks written between (stopping once all are folded and marked): the ledger, the marks, its sizes, and the
    evaluations it counts once they are all deleted."""
    uid, spent = "uid-evo", Spend(evaluations=1, gpu_hours=0.1)
    marks: dict[str, tuple] = {}
    names = [f"h{i:05d}" for i in range(n)]
    ledger, sizes = api.SpendLedger(), []
    for _ in range(rounds):
        ledger, total, to_mark = L.update(uid, ledger, [L.Seen(h, "Retired", spent, marks.get(h)) for h in names])
        assert total.evaluations == n and abs(total.gpu_hours - n / 10) < 1e-6  # right throughout
        assert len(ledger.closing) <= L.MAX_CLOSING and len(ledger.open) <= L.MAX_OPEN
        sizes.append(len(json.dumps(ledger.wire())))
        marks.update((h, L.parse_mark(v)) for h, v in to_mark)
        if not ledger.closing and not ledger.open:
            break
    return ledger, marks, sizes, L.update(uid, ledger, [])[1].evaluations


def test_the_ledger_stays_small_with_ten_thousand_hypotheses():
    """Folded 256 per reconcile as their marks land (two reconciles each), the rest counted while they exist and
    the first 1024 of them held open: the status stays about 100 kB at 10,000 Hypotheses (etcd takes 1.5 MB).
    Deleted before they are folded or held open, the others are not counted (the price of the bound)."""
    _, _, sizes, after_deletion = fold_rounds(10_000, 4)
    assert max(sizes) < 150_000 and after_deletion == 2 * L.MAX_CLOSING + L.MAX_OPEN
    ledger, marks, sizes, after_deletion = fold_rounds(1_000, 20)
    assert ledger.closing == {} and ledger.open == {} and len(marks) == 1_000 and sizes[-1] < 200
    assert after_deletion == 1_000
