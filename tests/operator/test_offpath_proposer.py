"""LLM proposers off the reconcile path (proposing.OffPathProposer).

Before: the provider was called inside apply_actions, so a hung provider held the reconcile (and a
kopf worker thread) for as long as it hung. Now the Evolution's step returns at once with its status
saying it waits for the answer, other Evolutions go on, and the wake-up completes once the answer
(or the last attempt's failure) is there."""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone

import kopf

from cambrian.operator import handlers as HD
from cambrian.operator.platform.base import ActionRefused
from cambrian.operator.proposing import OffPathProposer, ProposalBatch
from cambrian.operator.reconcile.actions import Owner, ProposeHypotheses

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_handlers_tests", Path(__file__).with_name("test_readout_and_handlers.py"))
_h = sys.modules["_handlers_tests"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)
EVO, MemPlatform, objects = _h.EVO, _h.MemPlatform, _h.objects  # the in-memory platform and objects fixture


def action(evolution: str, wakeup: int = 1) -> ProposeHypotheses:
    return ProposeHypotheses(Owner("Evolution", evolution, f"uid-{evolution}", "ns"), wakeup, f"{evolution}-w{wakeup}",
                             (("explore", 1),), ("optimizer",), {"agent": {"provider": "gemini"}}, {})


class Provider:
    """Hangs for the Evolutions in `hang` until released; answers at once for anyone else."""

    def __init__(self, hang=("slow",)):
        self.release = threading.Event()
        self.calls: list[str] = []
        self.hang = hang

    def __call__(self, a, existing):
        self.calls.append(a.owner.name)
        if a.owner.name in self.hang:
            self.release.wait(30)
        return ProposalBatch(items=[({"component": "optimizer"}, {})])


def wait_answer(p, a, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return p(a, [])
        except ActionRefused:
            time.sleep(0.02)
    raise AssertionError("no answer")


def test_a_hung_provider_delays_only_its_own_evolution_and_is_retried_with_backoff():
    provider = Provider()
    # timeouts long enough that a loaded machine's scheduling delays stay well inside them
    p = OffPathProposer(provider, timeout_s=1.5, attempts=2, backoff_s=0.1)
    t0 = time.monotonic()
    try:
        p(action("slow"), [])
        raise AssertionError("the hung call should not answer")
    except ActionRefused as exc:
        assert not exc.permanent and "waiting for the gemini proposer" in str(exc)
    assert time.monotonic() - t0 < 1.0  # the reconcile was not held (the call's timeout is 1.5 s)
    fast = wait_answer(p, action("fast"))
    assert len(fast.items) == 1 and time.monotonic() - t0 < 1.5  # another Evolution answered meanwhile
    slow = wait_answer(p, action("slow"))
    elapsed = time.monotonic() - t0
    assert not slow.items and provider.calls.count("slow") == 2
    assert sum("no answer within 1.5 s" in n for n in slow.notes) == 2
    assert elapsed >= 1.5 + 0.1 + 1.5  # two timeouts and one backoff
    # the answer is handed over once: the next wake-up asks again
    provider.release.set()
    assert len(wait_answer(p, action("slow", wakeup=2)).items) == 1


def test_an_exception_is_retried_and_a_success_ends_the_retries():
    answers = iter([RuntimeError("503 Service Unavailable"), ProposalBatch(items=[({"x": 1}, {})])])

    def flaky(a, existing):
        x = next(answers)
        if isinstance(x, Exception):
            raise x
        return x

    p = OffPathProposer(flaky, timeout_s=5, attempts=3, backoff_s=0.01)
    out = wait_answer(p, action("e"))
    assert len(out.items) == 1 and out.notes == ["attempt 1: RuntimeError: 503 Service Unavailable"]


def test_the_builtin_proposer_runs_inline():
    p = OffPathProposer(lambda a, e: ProposalBatch(notes=["inline"]))
    a = action("b")
    a = ProposeHypotheses(a.owner, 1, "b-w1", a.quotas, a.personas, {"agent": {"provider": "builtin"}}, {})
    assert p(a, []).notes == ["inline"]


def test_the_evolution_step_returns_at_once_and_says_it_waits(objects):  # noqa: F811
    """Through the handler: the step is not persisted as done (the wake-up replays) and the status says why."""
    provider = Provider(hang=("evo",))
    proposer = OffPathProposer(provider, timeout_s=30, attempts=1)

    class Platform(MemPlatform):
        def propose(self, a):
            proposer(a, [])
            self.applied.append(("propose", a.wakeup))

    p = Platform()
    m = kopf.Memo(platform=p)
    evo = {**EVO, "spec": {**EVO["spec"], "agent": {"provider": "gemini", "model": "gemini-2.5-pro",
                                                         "apiKeySecretRef": {"name": "k", "key": "k"}}}}
    t0 = time.monotonic()
    patch = kopf.Patch()
    HD.reconcile_evolution(kopf.Body(evo), patch, m)
    assert time.monotonic() - t0 < 5
    st = dict(patch["status"])
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "Blocked" and "waiting for the gemini proposer" in ready["message"]
    assert ("propose", 1) not in p.applied
    provider.release.set()
    deadline = time.monotonic() + 10
    while ("propose", 1) not in p.applied and time.monotonic() < deadline:
        HD.reconcile_evolution(kopf.Body({**evo, "status": st}), kopf.Patch(), m)
        time.sleep(0.05)
    assert ("propose", 1) in p.applied
