"""A/B/n in local mode: a treatment stopped early while the others go on keeps its users (same arm, same router
phase) and the real router serves them control's model; its server goes only once the router serves them from
control (operator/reconcile/rollout.py _stop_decided_arms). Before (fbd9e33) its weight went to 0, a new phase
re-assigned its users into control, and its server kept running until the Rollout ended."""

from __future__ import annotations

import shutil
from datetime import timedelta

import httpx
import pytest

from cambrian.operator import api, loop
from cambrian.operator.localstore import LocalStore
from cambrian.operator.platform.base import apply_actions
from cambrian.operator.platform.local import SIM_EPOCH, LocalPlatform, stop_leftovers
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import DeleteArm, DeployArm, SetWeights
from cambrian.operator.reconcile.observations import Analysis, RolloutObservation

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]  # a real model trained once, real servers and router


def rank(url: str, users: list[int]) -> dict:
    r = httpx.post(url + "/rank", json={"user_ids": users, "candidates": [[0, 1, 2]] * len(users)}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_a_stopped_arm_is_served_controls_model_by_the_router_then_its_server_goes(tmp_path, real_bundle):
    root = tmp_path / "run"
    for arm in ("control", "b", "c"):
        shutil.copytree(real_bundle, tmp_path / arm)
    spec = api.RolloutSpec.model_validate({
        "control": {"name": "control", "bundle": f"file://{tmp_path}/control"},
        "treatments": [{"name": a, "hypothesisRef": {"name": f"h-{a}"}, "bundle": f"file://{tmp_path}/{a}"}
                       for a in ("b", "c")],
        "salt": "s", "ramp": {"steps": [{"weights": [34, 33, 33]}]}, "metrics": {"northStar": [{"name": "minutes"}]}})
    store = LocalStore(root)
    store.create({"kind": "Rollout", "metadata": {"name": "ro"}, "spec": spec.wire()}, SIM_EPOCH)
    meta = loop.meta_of(store.get("rollouts", "default", "ro"))
    owner = R.owner_of(meta)
    p = LocalPlatform(root, store, lambda: SIM_EPOCH, data_dir=real_bundle.parent.parent / "w")
    state = {"status": api.RolloutStatus()}

    def step(now, analysis=None) -> list:
        obs = RolloutObservation(p.arms(owner), p.router_weights(owner, {}), analysis,
                                 services=p.router_services(owner, {}))
        res = R.reconcile(meta, spec, state["status"], api.Serving(), None, obs, now)
        apply_actions(p, res.actions)
        state["status"] = res.status
        store.write_status("Rollout", "ro", res.status.wire())
        return [type(a) for a in res.actions]

    try:
        step(SIM_EPOCH)   # the arms' servers start
        assert SetWeights in step(SIM_EPOCH + timedelta(seconds=1)) and state["status"].phase == "Running"
        router = p.envs["ro"].router.url
        users = list(range(100))   # the world's users
        before = rank(router, users)["arms"]
        u = before.index("c")
        assert rank(router, [u])["arm"] == "c"   # c's own server answers its users

        stop = state["status"].next_readout_at
        futile = Analysis("continue", "b: not significant yet; c: futility", n={"control": 34, "b": 33, "c": 33},
                          arm_outcomes=(("b", "continue", "not significant yet"), ("c", "inconclusive", "futility")))
        assert SetWeights in step(stop, futile)
        seen = httpx.get(p.envs["ro"].router.admin_url + "/weights", timeout=10).json()
        assert seen["weights"] == {"control": 34, "b": 33, "c": 33} and seen["phase"] == 1   # nobody moves
        assert seen["urls"]["c"] == seen["urls"]["control"] != seen["urls"]["b"]
        assert p.router_services(owner, {})["c"] == R.arm_name(meta, "control")
        assert rank(router, users)["arms"] == before   # same assignment
        one = rank(router, [u])
        assert one["arms"] == ["c"] and one["arm"] == "control"   # logged as c, served by control's server

        assert step(stop + timedelta(seconds=30)) == []   # the grace a cluster's kubelet needs
        assert DeleteArm in step(stop + timedelta(seconds=R.REDIRECT_GRACE_SECONDS))
        assert "c" not in p.arms(owner) and set(p.arms(owner)) == {"control", "b"}
        kinds = step(stop + timedelta(seconds=R.REDIRECT_GRACE_SECONDS + 60))
        assert DeployArm not in kinds and SetWeights not in kinds   # not started again
        assert rank(router, [u])["arm"] == "control" and rank(router, users)["arms"] == before
    finally:
        p.close()
    assert stop_leftovers(root.resolve()) == []
