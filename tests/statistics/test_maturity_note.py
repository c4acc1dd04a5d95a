"""Issue 20: a delayed secondary metric whose window has not closed reads as "not matured", not as missing users."""

from cambrian.stats import DecisionPolicy, Metric, SufficientStats, decide

N = 5_000


def _decide(metric: Metric, make_arm):
    pol = DecisionPolicy(north_star=Metric("watch"), planned_users_per_arm=N, min_users_per_arm=100, max_days=14,
                         secondary=(metric,))
    c, t = make_arm(N, seed=1), make_arm(N, 0.1, seed=2)
    stats = {"c": {"watch": c, metric.name: SufficientStats()}, "t": {"watch": t, metric.name: SufficientStats()}}
    return decide(pol, control="c", weights={"c": 1.0, "t": 1.0}, stats=stats, elapsed_days=4)


def test_unmatured_delayed_metric_says_when_it_matures(make_arm):
    row = _decide(Metric("active_days", matures_day=7), make_arm).secondary[0]
    assert row["note"] == "not matured: active_days matures on day 7" and row["estimate"] is None


def test_a_metric_read_at_once_keeps_the_sample_size_message(make_arm):
    row = _decide(Metric("ctr"), make_arm).secondary[0]
    assert "n=0 users; need at least 2" in row["note"]


def test_rollout_specs_carry_the_maturity_day():
    """The Rollout (both platforms, through the core's policy_for): each secondary metric matures after its
    own window."""
    from pathlib import Path

    import yaml

    from cambrian.operator.api import parse_resource
    from cambrian.operator.reconcile.readout import policy_for

    obj = yaml.safe_load((Path(__file__).parents[2] / "manifests/examples/rollout.yaml").read_text())
    obj["spec"]["metrics"]["northStar"] = [{"name": "watch_minutes", "window": "1d"},
                                           {"name": "active_days", "window": "7d"},
                                           {"name": "returned_next_day", "window": "2d"}]
    assert [m.matures_day for m in policy_for(parse_resource(obj).spec).secondary] == [7, 2]
