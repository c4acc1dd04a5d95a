"""Persona scheduling (operator/reconcile/scheduling.py): a wake-up's proposals shared by measured yield with an
exploration floor, the training order, and the core's ProposeHypotheses carrying the allocation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cambrian.operator import api
from cambrian.operator import proposing as P
from cambrian.operator.reconcile import scheduling as S
from cambrian.operator.reconcile.actions import ProposeHypotheses, RecordJournal
from cambrian.operator.reconcile.observations import HypothesisView, Spend

Q = {"explore": 1, "exploit": 1, "innovate": 1}
ALL = ("optimizer", "architecture", "reward")


def scored(name, persona, gain, floor=0.01, evaluations=1, phase="Scored"):
    comp = {"optimizer": "optimizer", "architecture": "architecture", "reward": "reward"}[persona]
    return HypothesisView(name, phase, comp, persona=persona, gain=gain, noise_floor=floor, evaluations=evaluations,
                          attempts=1)


def counts(s: S.Schedule) -> dict[str, int]:
    return {sh.persona: sh.proposals for sh in s.shares}


def test_no_history_is_an_equal_split_in_the_listed_order_interleaved():
    s = S.schedule("yield", ALL, 3, Q, [], floor=1)
    assert counts(s) == {"optimizer": 3, "architecture": 3, "reward": 3} and s.budget == 9
    assert [p for p, _ in s.allocation()] == list(ALL)
    assert dict(s.allocation()[2][1]) == Q
    # every persona's first proposal trains before any persona's second (the fixed order trained reward 7th)
    assert s.order() == ALL * 3
    assert "equal split" in s.reason
    # proposals still in flight measure nothing
    assert counts(S.schedule("yield", ALL, 3, Q, [HypothesisView("h", "Training", "reward", persona="reward")])) == \
        counts(s)


def test_fixed_keeps_each_personas_proposals_together():
    s = S.schedule("fixed", ALL, 2, {"explore": 1, "exploit": 1, "innovate": 0}, [scored("r", "reward", 5.0)])
    assert counts(s) == {"optimizer": 2, "architecture": 2, "reward": 2}
    assert s.order() == ("optimizer", "optimizer", "architecture", "architecture", "reward", "reward")


def test_yield_is_proportional_above_the_exploration_floor():
    """reward: 3 floors in 1 evaluation; optimizer: 1 floor over 2 evaluations (one confirmation); architecture
    lost (a negative gain counts 0). Budget 9, floor 1: 6 left, shared 3 : 0.5 : 0 -> reward 1+5, optimizer 1+1."""
    hyps = [scored("r1", "reward", 0.03), scored("o1", "optimizer", 0.01, evaluations=2),
            scored("a1", "architecture", -0.02)]
    s = S.schedule("yield", ALL, 3, Q, hyps, floor=1)
    assert counts(s) == {"reward": 6, "optimizer": 2, "architecture": 1}
    assert [sh.persona for sh in s.shares] == ["reward", "optimizer", "architecture"]  # best first
    assert [sh.yield_ for sh in s.shares] == pytest.approx([3.0, 0.5, 0.0])
    assert dict(dict(s.allocation())["reward"]) == {"explore": 2, "exploit": 2, "innovate": 2}
    assert s.order()[:3] == ("reward", "optimizer", "architecture") and s.order().count("reward") == 6
    assert "reward 3.00 floors / 1 evaluations" in s.reason
    # a larger floor leaves less to share by yield
    assert counts(S.schedule("yield", ALL, 3, Q, hyps, floor=3)) == {p: 3 for p in ALL}


def test_a_persona_with_only_failures_keeps_only_its_floor():
    hyps = [scored("o1", "optimizer", 0.02), HypothesisView("a1", "Failed", "architecture", persona="architecture",
                                                             attempts=2, evaluations=2),
            HypothesisView("a2", "Failed", "architecture", persona="architecture", failure_stage="static"),  # no run
            HypothesisView("a3", "Rejected", "architecture", persona="architecture")]
    s = S.schedule("yield", ("optimizer", "architecture"), 3, Q, hyps, floor=1)
    assert counts(s) == {"optimizer": 5, "architecture": 1}
    arch = next(sh for sh in s.shares if sh.persona == "architecture")
    assert arch.evaluations == 2 and arch.yield_ == 0.0
    # with no exploration floor it gets nothing, and the action asks it for nothing
    s0 = S.schedule("yield", ("optimizer", "architecture"), 3, Q, hyps, floor=0)
    assert counts(s0) == {"optimizer": 6, "architecture": 0} and [p for p, _ in s0.allocation()] == ["optimizer"]


def test_an_unmeasured_persona_is_assumed_average():
    hyps = [scored("o1", "optimizer", 0.02), scored("a1", "architecture", 0.0)]
    s = S.schedule("yield", ALL, 2, Q, hyps, floor=1)
    # optimizer 2 floors/eval, architecture 0, reward unknown -> mean 1: 3 left shared 2 : 1 : 0
    assert counts(s) == {"optimizer": 3, "reward": 2, "architecture": 1}


def test_a_budget_smaller_than_the_personas_goes_to_the_best_first():
    hyps = [scored("r1", "reward", 0.03), scored("o1", "optimizer", 0.01), scored("a1", "architecture", 0.0)]
    s = S.schedule("yield", ALL, 3, Q, hyps, floor=1, budget=2)
    assert counts(s) == {"reward": 1, "optimizer": 1, "architecture": 0}
    assert s.order() == ("reward", "optimizer") and len(s.allocation()) == 2
    # no history: the wake-up number rotates who comes first, so no persona is always left out
    firsts = {S.schedule("yield", ALL, 3, Q, [], budget=1, wakeup=w).order() for w in (1, 2, 3)}
    assert firsts == {("optimizer",), ("architecture",), ("reward",)}
    assert S.schedule("yield", ALL, 3, Q, [], budget=0).order() == ()


def test_split_and_category_quotas():
    assert S.split(7, [1.0, 1.0, 1.0]) == [3, 2, 2]
    assert S.split(5, [0.0, 0.0]) == [3, 2]
    assert S.category_quotas(1, Q) == (("explore", 1), ("exploit", 0), ("innovate", 0))
    assert S.category_quotas(4, {"explore": 0, "exploit": 2, "innovate": 1}) == (("explore", 0), ("exploit", 3),
                                                                                  ("innovate", 1))


def test_the_exploration_floor_cannot_exceed_the_proposals_per_wakeup():
    base = {"objective": {"northStar": [{"name": "m"}]}, "data": {"world": {}}}
    with pytest.raises(ValueError, match="explorationFloor"):
        api.EvolutionSpec.model_validate({**base, "agent": {"scheduling": {"explorationFloor": 4}}})
    sp = api.EvolutionSpec.model_validate(base)
    assert sp.agent.scheduling.policy == "yield" and sp.agent.scheduling.exploration_floor == 1


def test_by_default_the_reward_persona_is_first_until_a_yield_is_measured():
    from cambrian.agents.personas import PERSONAS

    sp = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "m"}]}, "data": {"world": {}}})
    # the CRD's default and the local settings' default (agents/personas.py) are the same list
    assert sp.agent.personas == list(PERSONAS) == ["reward", "architecture", "optimizer"]
    first = S.schedule("yield", sp.agent.personas, 2, Q, [], wakeup=1)
    assert first.order() == ("reward", "architecture", "optimizer") * 2
    # a measured yield outranks the listed order
    later = S.schedule("yield", sp.agent.personas, 2, Q, [scored("r", "reward", 0.0), scored("a", "architecture", 0.0),
                                                          scored("o", "optimizer", 0.02)], wakeup=1)
    assert later.order()[0] == "optimizer"


# --------------------------------------------------------------------------------------------- the core


def _core_wakeup(sp, hyps, spend=Spend()):
    from tests.operator.test_reconcile_evolution import META, T0, run, with_champion

    _, r2 = with_champion(sp)
    # wake-up 2: `hyps` carry no wake-up, so wake-up 1 created nothing and the next comes two cadences after it
    r = run(sp, r2.status, hyps, spend=spend, now=T0 + timedelta(minutes=10))
    return r, [a for a in r.actions if isinstance(a, ProposeHypotheses)][0]


def test_the_core_carries_the_allocation_in_the_action_and_records_why():
    from tests.operator.test_reconcile_evolution import spec

    hyps = [scored("r1", "reward", 0.03), scored("o1", "optimizer", 0.0), scored("a1", "architecture", 0.0)]
    r, action = _core_wakeup(spec(), hyps)
    # wake-up 2: optimizer and architecture tie (0 floors each), so the wake-up number rotates their order
    assert [(p, sum(n for _, n in q)) for p, q in action.allocation] == [("reward", 7), ("architecture", 1),
                                                                          ("optimizer", 1)]
    assert action.order[:3] == ("reward", "architecture", "optimizer") and len(action.order) == 9
    assert [(s.persona, s.proposals) for s in r.status.persona_schedule] == [("reward", 7), ("architecture", 1),
                                                                              ("optimizer", 1)]
    assert r.status.persona_schedule[0].yield_per_evaluation == pytest.approx(3.0)
    assert api.parse_status("Evolution", r.status.wire()).persona_schedule == r.status.persona_schedule
    ev = [a for a in r.actions if isinstance(a, RecordJournal) and a.event == "PersonasScheduled"]
    assert len(ev) == 1 and "reward 7" in ev[0].message and ev[0].data["allocation"]["reward"] == 7
    # the action survives the trip to the proposer's child process (JSON on its stdin)
    import json

    back = P.action_from_wire(json.loads(json.dumps(P.action_wire(action), default=str)))
    assert back == action and back.allocation == action.allocation and back.order == action.order


def test_the_core_asks_no_more_than_the_evaluations_budget_can_train_and_confirm():
    from tests.operator.test_reconcile_evolution import spec

    sp = spec(agent={"budgets": {"evaluations": 5}})
    # 4 runs left: 2 proposals, and the 2 confirmation seeds (the default confirmSeeds) of the best of them
    _, action = _core_wakeup(sp, [], spend=Spend(evaluations=1))
    # the default personas (reward, architecture, optimizer), rotated by one at wake-up 2
    assert len(action.order) == 2 and [p for p, _ in action.allocation] == ["architecture", "optimizer"]
    _, action = _core_wakeup(sp, [], spend=Spend(evaluations=3))
    assert len(action.order) == 1  # 2 left: still one, as before a budget runs low
    three = spec(agent={"budgets": {"evaluations": 5}}, noise={"confirmSeeds": 3})
    _, action = _core_wakeup(three, [], spend=Spend(evaluations=0))
    assert len(action.order) == 2
    fixed = spec(agent={"budgets": {"evaluations": 5}, "scheduling": {"policy": "fixed"}})
    _, action = _core_wakeup(fixed, [], spend=Spend(evaluations=3))
    assert len(action.order) == 9 and action.order[:3] == ("reward",) * 3


# --------------------------------------------------------------------------------------------- the proposer


def test_the_cluster_proposer_asks_each_persona_for_its_allocation_in_training_order():
    sp = api.parse_spec("Evolution", {"objective": {"northStar": [{"name": "m"}]}, "data": {"world": {}},
                                      "agent": {"provider": "builtin"}})
    plan = S.schedule("yield", ALL, 3, Q, [scored("r1", "reward", 0.03), scored("o1", "optimizer", 0.01),
                                           scored("a1", "architecture", -0.01)], floor=1)
    from cambrian.operator.reconcile.actions import Owner

    action = ProposeHypotheses(Owner("Evolution", "evo", "uid", "ns"), 2, "evo-w2-abc", tuple(Q.items()), ALL,
                               sp.wire(), sp.baseline, allocation=plan.allocation(), order=plan.order())
    batch = P.ClusterProposer()(action, [])
    personas = [hs["origin"]["persona"] for hs, _ in batch.items]
    assert personas == list(plan.order()) == ["reward", "optimizer", "architecture", "reward", "optimizer",
                                              "reward", "reward", "reward", "reward"]
    cats = [hs["origin"]["category"] for hs, _ in batch.items if hs["origin"]["persona"] == "architecture"]
    assert cats == ["explore"]  # its one proposal: the first category of its share
