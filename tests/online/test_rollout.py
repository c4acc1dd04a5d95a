"""Rollout: spec validation and SRM inputs (fast); the full local loop with trained bundles, the real
router, collector and Prometheus (slow): the better candidate is promoted, the clickbait one rolled back,
and no decision is made while Prometheus is down."""

from __future__ import annotations

import json
import shutil

import pytest

from cambrian.errors import ConfigError
from cambrian.online.rollout import RolloutSpec, effective_weights, run_rollout


def _spec(**kw):
    base = dict(name="exp", world="w", control="c", treatments={"t": "t"})
    return {**base, **kw}


def test_spec_errors_name_the_field():
    RolloutSpec.model_validate(_spec())
    with pytest.raises(ConfigError, match=r"ramp: .*starting at day 0"):
        run_rollout(_spec(ramp=[{"day": 1, "weight": 10}]), "/nonexistent")
    with pytest.raises(ConfigError, match=r"ramp\[0\].weight: 60% per treatment"):
        run_rollout(_spec(treatments={"a": "a", "b": "b"}, ramp=[{"day": 0, "weight": 60}]), "/nonexistent")
    with pytest.raises(ConfigError, match="days"):
        run_rollout(_spec(days=0), "/nonexistent")


def test_effective_weights_mix_cohorts_by_day():
    cohorts = {7: {"control": 80, "t": 20}, 8: {"control": 10, "t": 10}}
    weights = {7: {"control": 80, "t": 20}, 8: {"control": 50, "t": 50}}
    w, observed = effective_weights(cohorts, weights, ["control", "t"])
    assert observed == {"control": 90, "t": 30}
    assert w["t"] == pytest.approx((100 * 0.2 + 20 * 0.5) / 120)


# ----------------------------------------------------------------------------- slow, end to end
needs_prom = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cambrian.trainer.config import parse_config
    from cambrian.trainer.train import train
    from cambrian.world.generate import generate

    root = tmp_path_factory.mktemp("online-e2e")
    generate(root / "world", n_users=500, days=5, seed=11, n_items=250, preset="easy")  # large effects: decides in 4 days
    bundles = {}
    rewards = {"click": {"label": "CAST(click AS DOUBLE)"},
               "satisfaction": {"label": "CASE WHEN click = 1 AND hate = 0 THEN completion ELSE 0.0 END"}}
    for name, reward in rewards.items():
        cfg = parse_config({"reward": reward, "training": {"epochs": 2}})
        train(cfg, root / "world", root / name)
        bundles[name] = str(root / name / "bundle")
    return root, bundles


def _rollout_spec(root, control, treatment, name):
    return {"name": name, "world": str(root / "world"), "control": control, "treatments": {"cand": treatment},
            "days": 4, "ramp": [{"day": 0, "weight": 20}, {"day": 1, "weight": 50}],
            "north_star": "watch_minutes",
            "guardrails": [{"metric": "hate_rate", "margin": 0.25, "higher_is_better": False}],
            "secondary": ["ctr"], "planned_users_per_arm": 300, "min_users_per_arm": 50, "pre_days": 5,
            "prometheus_wait_seconds": 20}


@pytest.mark.slow
@pytest.mark.prometheus
@needs_prom
def test_better_candidate_promoted_and_no_decision_while_prometheus_down(trained, tmp_path):
    root, bundles = trained
    downs = []

    def outage(rollout, day):
        # Prometheus goes down before the first look and comes back before the second.
        if not downs:
            rollout.prometheus.stop()
            downs.append(day)
        elif rollout.prometheus.proc is None:
            rollout.prometheus.start()

    result = run_rollout(_rollout_spec(root, bundles["click"], bundles["satisfaction"], "promote-me"),
                         tmp_path / "out", on_day_end=outage)
    kinds = [(e["kind"], e["day"]) for e in result.timeline]
    assert ("no_decision", downs[0]) in kinds  # nothing decided while it was down
    readouts = [e for e in result.timeline if e["kind"] == "readout"]
    assert readouts and readouts[0]["day"] > downs[0]
    assert result.outcome == "promote", result.reason
    assert result.winner == "cand"
    assert result.final_weights == {"control": 0, "cand": 100}
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["outcome"] == "promote"
    ramps = [e["weights"] for e in result.timeline if e["kind"] == "weights"]
    assert ramps[0] == {"control": 50, "cand": 50}  # day-1 ramp step (day 0 starts at 20%)


@pytest.mark.slow
@pytest.mark.prometheus
@needs_prom
def test_clickbait_candidate_rolled_back(trained, tmp_path):
    root, bundles = trained
    result = run_rollout(_rollout_spec(root, bundles["satisfaction"], bundles["click"], "clickbait"), tmp_path / "out")
    assert result.outcome == "rollback", result.reason
    assert "cand" in result.rolled_back
    assert result.final_weights == {"control": 100, "cand": 0}
    first_rollback = next(e for e in result.timeline if e["kind"] == "weights" and e["weights"]["cand"] == 0)
    look = next(e for e in result.timeline if e["kind"] == "readout" and e["outcome"] == "rollback")
    assert first_rollback["day"] == look["day"]  # to 0% within the same evaluation interval
