"""Decision metrics defined in PromQL over the user's own series (issue 17): a Rollout's `metrics.promql` gives
each statistic of a metric as a PromQL template run per arm; the answers are the per-arm sums the analysis
reads. Against a real Prometheus scraping the user's exporter and the real collector: the sums equal what the
series hold, a guardrail defined so rolls the worse arm back through the operator's loop, and a template
Prometheus' parser refuses fails the Rollout before anything is deployed. Without Prometheus: the static checks
of a template and the checks that answers are per-user sums (never a verdict on sums that cannot be)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cambrian.errors import ConfigError
from cambrian.operator import api
from cambrian.operator.reconcile import promql as PQ
from cambrian.operator.reconcile import readout as RD
from cambrian.stats.sums import RatioStats, SufficientStats

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
ARM = 'arm="{{arm}}"'
WATCH = {"name": "watch", "kind": "mean", "queries": {
    "users": f"sum(shop_watch_users{{{ARM}}})", "sumY": f"sum(shop_watch_minutes_sum{{{ARM}}})",
    "sumY2": f"sum(shop_watch_minutes_sq_sum{{{ARM}}})", "sumX": f"sum(shop_watch_pre_sum{{{ARM}}})",
    "sumX2": f"sum(shop_watch_pre_sq_sum{{{ARM}}})", "sumXy": f"sum(shop_watch_pre_cross_sum{{{ARM}}})"}}
LATENCY = {"name": "latency_ms", "kind": "mean", "queries": {
    "users": f"sum(shop_latency_users{{{ARM}}})", "sumY": f"sum(shop_latency_ms_sum{{{ARM}}})",
    "sumY2": f"sum(max_over_time(shop_latency_ms_sq_sum{{{ARM}}}[{{{{window}}}}]))"}}
CTR = {"name": "ctr_own", "kind": "ratio", "queries": {
    "users": f"sum(shop_ctr_users{{{ARM}}})", "sumM": f"sum(shop_clicks_sum{{{ARM}}})",
    "sumD": f"sum(shop_views_sum{{{ARM}}})", "sumM2": f"sum(shop_clicks_sq_sum{{{ARM}}})",
    "sumD2": f"sum(shop_views_sq_sum{{{ARM}}})", "sumMd": f"sum(shop_clicks_views_sum{{{ARM}}})"}}
SIGNUP = {"name": "signup", "kind": "proportion", "queries": {
    "users": f"sum(shop_exposed_users_total{{{ARM}}})", "sumY": f"sum(shop_signed_up_users_total{{{ARM}}})"}}


def spec_with(promql: list[dict], north: str = "watch", guardrails: list[dict] | None = None,
              arms: tuple[str, ...] = ("fast",), **statistics) -> api.RolloutSpec:
    return api.parse_spec("Rollout", {
        "control": {"bundle": "pvc://b/control"},
        "treatments": [{"name": t, "bundle": f"pvc://b/{t}", "hypothesisRef": {"name": t}} for t in arms],
        "ramp": {"steps": [{"weights": [50, *[50 // len(arms)] * len(arms)], "duration": "7d"}]},
        "metrics": {"northStar": [{"name": north}], "guardrails": guardrails or [], "promql": promql,
                    "readout": {"interval": "1h"}},
        "statistics": {"minSamplePerArm": 200, **statistics}, "salt": "s1", "decisionPolicy": "auto",
    })


# ---- the definition ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric,fragment", [
    ({**WATCH, "queries": {k: v for k, v in WATCH["queries"].items() if k != "sumY2"}},
     "kind mean: give queries users, sumY, sumY2"),
    ({**WATCH, "queries": {k: v for k, v in WATCH["queries"].items() if k != "sumXy"}}, "for CUPED, all of sumX"),
    ({**SIGNUP, "queries": {**SIGNUP["queries"], "sumY2": SIGNUP["queries"]["sumY"]}},
     "kind proportion: give queries users, sumY and no others"),
    ({**CTR, "queries": {**CTR["queries"], "sumMd": None}}, "kind ratio: give queries"),
    ({**SIGNUP, "queries": {**SIGNUP["queries"], "users": "sum(shop_exposed_users_total)"}},
     "queries.users: promql: select each arm's series with {{arm}}"),
    ({**SIGNUP, "queries": {**SIGNUP["queries"], "users": 'sum(x{arm="{{arm}}", ns="{{namespace}}"})'}},
     "queries.users: promql: the only placeholders are {{arm}} and {{window}}"),
    ({**SIGNUP, "kind": "count"}, "kind"),
])
def test_a_definition_its_kind_cannot_use_is_refused_naming_it(metric, fragment):
    metric = {**metric, "queries": {k: v for k, v in metric["queries"].items() if v is not None}}
    with pytest.raises(ConfigError, match=fragment.replace("{", r"\{").replace("}", r"\}")) as exc:
        spec_with([metric], north="signup")
    assert "\n" not in str(exc.value)


def test_a_name_is_defined_once():
    with pytest.raises(ConfigError, match="metric names must be unique"):
        spec_with([SIGNUP, SIGNUP], north="signup")
    with pytest.raises(ConfigError, match="defined both by its own query and as a promql metric"):
        spec_with([SIGNUP], north="signup", guardrails=[{"metric": "signup", "limit": 1, "query": 'x{arm="{{arm}}"}'}])


def test_each_arm_gets_its_queries_and_the_window_since_the_start():
    spec = spec_with([WATCH, LATENCY])
    q = PQ.queries(spec, api.RolloutStatus(started_at=NOW - timedelta(hours=2)), NOW)
    assert set(q) == {"control", "fast"}
    assert q["fast"]["watch/sum_y"] == 'sum(shop_watch_minutes_sum{arm="fast"})'
    assert q["control"]["latency_ms/sum_y2"] == 'sum(max_over_time(shop_latency_ms_sq_sum{arm="control"}[7200s]))'
    assert len(q["fast"]) == len(WATCH["queries"]) + len(LATENCY["queries"])
    checks = PQ.check_queries(spec)
    assert checks["metrics.promql[latency_ms].queries.sumY2"].endswith('{arm="control"}[1s]))')


# ---- what the answers must satisfy ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,got,fragment", [
    ("mean", {"n": 100.5, "sum_y": 10.0, "sum_y2": 50.0}, "users = 100.5 is not a whole number"),
    ("mean", {"n": 100, "sum_y": 1000.0, "sum_y2": 9000.0}, "below sumY²/users"),
    ("ratio", {"n": 10, "sum_m": 5, "sum_d": 100, "sum_m2": 5, "sum_d2": 10, "sum_md": 1}, "sumD2"),
    ("proportion", {"n": 100, "sum_y": 130.0}, "a count of events is not a proportion of users"),
    ("proportion", {"n": 100, "sum_y": 12.5}, "whole number"),
    ("mean", {"n": 0, "sum_y": 3.0, "sum_y2": 9.0}, "must be 0 when users is 0"),
])
def test_answers_no_per_user_sums_can_give_stop_the_readout(kind, got, fragment):
    with pytest.raises(PQ.PromQLDataError, match=fragment):
        PQ.sums("m", kind, "fast", got)


def test_a_proportion_is_exact_from_two_counts():
    s = PQ.sums("signup", "proportion", "fast", {"n": 400.0, "sum_y": 52.0})
    y = np.r_[np.ones(52), np.zeros(348)]
    ref = SufficientStats.from_arrays(y, ref_y=0.0, ref_x=0.0)
    assert (s.n, s.sum_y, s.sum_y2) == (ref.n, ref.sum_y, ref.sum_y2)


def _collector_sums(n: int = 400) -> SufficientStats:
    return SufficientStats(n=n, sum_y=2.0 * n, sum_y2=5.0 * n)


def test_an_arm_without_every_answer_has_no_sums_and_is_never_promoted():
    """The collector exports a metric of the same name: it is replaced for every arm, never used as a fallback
    for the arm whose PromQL did not all answer."""
    spec = spec_with([SIGNUP], north="signup", sequential="msprt")
    collected = {arm: {"signup": _collector_sums()} for arm in ("control", "fast")}
    answers = {"control": {"signup/n": 1000.0, "signup/sum_y": 100.0}, "fast": {"signup/n": 1000.0}}
    stats, gauges = PQ.merge(spec, collected, answers)
    assert "signup" not in stats["fast"] and stats["control"]["signup"].sum_y == 100.0 and gauges == {}
    status = api.RolloutStatus(phase="Running", started_at=NOW - timedelta(days=3), step_history=[NOW])
    a = RD.analyse(spec, status, collected, NOW, {"control": 1000, "fast": 1000}, None, answers)
    assert a.outcome == "continue" and "fast/signup" in a.reason
    answers["fast"]["signup/sum_y"] = 300.0  # now complete: +200% signups, far outside the noise
    a = RD.analyse(spec, status, collected, NOW, {"control": 1000, "fast": 1000}, None, answers)
    assert a.outcome == "promote" and a.winner == "fast", a.reason


# ---- against a real Prometheus -------------------------------------------------------------------------------


def _users(rng: np.random.Generator, n: int, latency_lift: float, watch_lift: float) -> dict[str, np.ndarray]:
    pre = rng.gamma(4.0, 5.0, n)
    views = rng.poisson(40, n) + 1
    return {"pre": pre, "watch": pre * watch_lift * rng.lognormal(0, 0.3, n),
            "latency": rng.gamma(9.0, 20.0, n) * latency_lift,
            "views": views.astype(float), "clicks": rng.binomial(views, 0.05).astype(float),
            "signed": (rng.random(n) < 0.1).astype(float)}


def exposition(users: dict[str, dict[str, np.ndarray]]) -> str:
    """The user's service exports per-arm sums over its users, from two pods (so the queries must sum())."""
    lines = []

    def put(name: str, arm: str, values: np.ndarray) -> None:
        half = len(values) // 2
        for pod, part in (("a", values[:half]), ("b", values[half:])):
            lines.append(f'{name}{{arm="{arm}",pod="{pod}"}} {float(part.sum())!r}')

    for arm, u in users.items():
        one = np.ones_like(u["watch"])
        for prefix, key in (("shop_watch", "watch"), ("shop_latency", "latency")):
            put(f"{prefix}_users", arm, one)
        put("shop_ctr_users", arm, one)
        put("shop_watch_minutes_sum", arm, u["watch"])
        put("shop_watch_minutes_sq_sum", arm, u["watch"] ** 2)
        put("shop_watch_pre_sum", arm, u["pre"])
        put("shop_watch_pre_sq_sum", arm, u["pre"] ** 2)
        put("shop_watch_pre_cross_sum", arm, u["pre"] * u["watch"])
        put("shop_latency_ms_sum", arm, u["latency"])
        put("shop_latency_ms_sq_sum", arm, u["latency"] ** 2)
        put("shop_clicks_sum", arm, u["clicks"])
        put("shop_views_sum", arm, u["views"])
        put("shop_clicks_sq_sum", arm, u["clicks"] ** 2)
        put("shop_views_sq_sum", arm, u["views"] ** 2)
        put("shop_clicks_views_sum", arm, u["clicks"] * u["views"])
        put("shop_exposed_users_total", arm, one)
        put("shop_signed_up_users_total", arm, u["signed"])
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The user's exporter, the real collector (exposures), and a real Prometheus scraping both."""
    from cambrian.online.collector import Collector, Store
    from cambrian.online.prometheus import PrometheusProcess
    from cambrian.online.runner import BackgroundApp
    from cambrian.testing.exporter import Exporter

    if shutil.which("prometheus") is None:  # a failure in CI (tests/conftest.py), where setup.sh installs it
        pytest.skip("prometheus is not installed (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("promql")
    with Exporter() as exporter, BackgroundApp(Collector(Store(tmp / "collector.sqlite")).app()) as collector:
        with PrometheusProcess({"shop": [exporter.target], "collector": [collector.url.split("//")[1]]},
                               workdir=tmp / "prom") as prom:
            yield exporter, collector, prom


def _wait_for(prom_url: str, expr: str, want: int) -> None:
    from cambrian.online.prometheus import PromClient

    client = PromClient(prom_url)
    deadline = time.monotonic() + 30
    try:
        while len(client.query(expr)) < want:
            assert time.monotonic() < deadline, f"prometheus never scraped {expr}"
            time.sleep(0.3)
    finally:
        client.close()


def _platform(prom_url: str):
    from cambrian.operator.platform.kubernetes import KubernetesPlatform

    # the Kubernetes adapter's own readout and check, against the Prometheus of the test (no API server is used)
    return KubernetesPlatform(prometheus_url=prom_url, promql_url=prom_url, prometheus_timeout=5.0)


@pytest.mark.prometheus
def test_promql_metrics_give_the_sums_the_series_hold(stack):
    exporter, _, prom = stack
    rng = np.random.default_rng(5)
    users = {"control": _users(rng, 900, 1.0, 1.0), "fast": _users(rng, 700, 1.0, 1.1)}
    exporter.text = exposition(users)
    _wait_for(prom.url, 'shop_signed_up_users_total{arm="fast"}', 2)
    spec = spec_with([WATCH, LATENCY, CTR, SIGNUP])
    status = api.RolloutStatus(phase="Running", started_at=datetime.now(timezone.utc) - timedelta(minutes=5))
    r = _platform(prom.url).prometheus_readout("shop-exp", PQ.queries(spec, status, datetime.now(timezone.utc)))
    stats, gauges = PQ.merge(spec, r.stats, r.values)
    assert gauges == {}
    for arm, u in users.items():
        w = SufficientStats.from_arrays(u["watch"], u["pre"], ref_y=0.0, ref_x=0.0)
        got = stats[arm]["watch"]
        for f in ("n", "sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"):
            assert getattr(got, f) == pytest.approx(getattr(w, f), rel=1e-12), (arm, f)
        lat = stats[arm]["latency_ms"]
        assert (lat.n, lat.sum_y) == (len(u["latency"]), pytest.approx(u["latency"].sum(), rel=1e-12))
        assert lat.sum_y2 == pytest.approx((u["latency"] ** 2).sum(), rel=1e-12)
        c = RatioStats.from_arrays(u["clicks"], u["views"], ref_m=0.0, ref_d=0.0)
        assert stats[arm]["ctr_own"].to_dict() == pytest.approx(c.to_dict(), rel=1e-12)
        s = stats[arm]["signup"]
        assert (s.n, s.sum_y, s.sum_y2) == (len(u["signed"]), u["signed"].sum(), u["signed"].sum())
        # the CUPED covariate is the user's: the adjusted variance is below the raw one
        assert w.cov_xy > 0
    # the treatment's +10% watch time is what the sums say
    lift = (stats["fast"]["watch"].mean_y / stats["control"]["watch"].mean_y) - 1
    assert lift == pytest.approx(users["fast"]["watch"].mean() / users["control"]["watch"].mean() - 1, rel=1e-9)


@dataclass
class Cluster:
    """The Kubernetes side of the loop in memory (arms always ready, the router's weights); Prometheus through
    the real Kubernetes adapter's readout and check."""

    prometheus: object
    weights: dict | None = None
    services: dict | None = None  # arm -> the Service serving it (SetWeights)
    deployed: list = field(default_factory=list)
    journal: list = field(default_factory=list)

    def deploy_arm(self, a): self.deployed.append(a.arm)
    def delete_arm(self, a): pass
    def set_weights(self, a): self.weights = a.as_dict(); self.services = {w.arm: w.service for w in a.weights}
    def clear_weights(self, a): self.weights = self.services = None
    def router_weights(self, owner, serving): return self.weights
    def router_services(self, owner, serving): return self.services
    def record(self, a): self.journal.append(a)

    def arms(self, owner):
        from cambrian.operator.reconcile.observations import ArmObservation

        return {arm: ArmObservation(arm, True, True) for arm in self.deployed}

    def prometheus_readout(self, name, gauges=None): return self.prometheus.prometheus_readout(name, gauges)
    def check_promql(self, name, queries): return self.prometheus.check_promql(name, queries)


class Objects:
    def get(self, plural, ns, name): return None
    def list(self, plural, ns): return []


def _obj(spec: api.RolloutSpec, status: dict | None = None, generation: int = 1) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": "Rollout",
            "metadata": {"name": "shop-exp", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": spec.wire(), "status": status or {}}


@pytest.mark.prometheus
def test_a_promql_guardrail_breach_rolls_the_arm_back(stack):
    """Treatment `slow` serves users 30% slower (its users' latency_ms, a PromQL metric, guardrail margin 5%);
    its watch time is no better. The operator's loop, reading exposures from the collector and the metrics from
    the user's series through Prometheus, rolls it back for the guardrail, as it would a collector metric."""
    import httpx

    from cambrian.operator import loop

    exporter, collector, prom = stack
    rng = np.random.default_rng(8)
    users = {"control": _users(rng, 1500, 1.0, 1.0), "slow": _users(rng, 1500, 1.3, 1.0)}
    exporter.text = exposition(users)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=6)
    day = (start - datetime(1970, 1, 1, tzinfo=timezone.utc)).days
    ids = iter(range(10_000_000))
    exposures = [[next(ids), arm, day] for arm, u in users.items() for _ in range(len(u["watch"]))]
    assert httpx.post(collector.url + "/exposures", json={"experiment": "shop-exp", "exposures": exposures}).status_code == 200
    assert httpx.post(collector.url + "/close_day", json={"day": day}).status_code == 200
    _wait_for(prom.url, 'cambrian_arm_exposures{experiment="shop-exp"}', 2)
    _wait_for(prom.url, 'shop_latency_ms_sum{arm="slow"}', 2)
    spec = spec_with([WATCH, LATENCY], arms=("slow",), sequential="msprt",
                     guardrails=[{"metric": "latency_ms", "direction": "minimize", "margin": 0.05}])
    cluster = Cluster(_platform(prom.url))
    now = datetime.now(timezone.utc)
    # created: the templates parse, the arms deploy and the experiment starts
    s = loop.step("Rollout", _obj(spec), Objects(), cluster, start)
    assert s.result.status.phase == "Deploying" and sorted(cluster.deployed) == ["control", "slow"]
    s = loop.step("Rollout", _obj(spec, s.result.status.wire()), Objects(), cluster, start)
    assert s.result.status.phase == "Running", s.result.status.reason
    # the first readout is due an hour later; read now (the series are there already)
    s = loop.step("Rollout", _obj(spec, s.result.status.wire()), Objects(), cluster, now)
    st = s.result.status
    assert s.analysis is not None and st.phase == "RolledBack", (st.phase, st.reason)
    assert "latency_ms" in st.reason and "slow" in st.reason
    assert ("slow", "latency_ms", True) in s.analysis.guardrails
    assert cluster.weights == {"control": 100, "slow": 0}


@pytest.mark.prometheus
def test_a_template_prometheus_cannot_parse_fails_the_rollout_before_anything_deploys(stack):
    from cambrian.online.prometheus import PromClient, PromQLRejected
    from cambrian.operator import loop

    _, _, prom = stack
    broken = {**SIGNUP, "queries": {**SIGNUP["queries"], "sumY": 'sum(rate(shop_signed_up_users_total{arm="{{arm}}"}[5m])'}}
    spec = spec_with([broken], north="signup")  # the static checks pass: only a PromQL parser sees it
    cluster = Cluster(_platform(prom.url))
    s = loop.step("Rollout", _obj(spec), Objects(), cluster, NOW)
    st = s.result.status
    assert st.phase == "Failed" and cluster.deployed == [] and cluster.weights is None
    assert st.reason.startswith("spec.metrics.promql[signup].queries.sumY: Prometheus refuses the query")
    assert "parse error" in st.reason and "\n" not in st.reason
    # nothing more until the spec changes; a fixed spec (generation 2) starts
    assert loop.step("Rollout", _obj(spec, st.wire()), Objects(), cluster, NOW).result is None
    s = loop.step("Rollout", _obj(spec_with([SIGNUP], north="signup"), st.wire(), generation=2), Objects(), cluster, NOW)
    assert s.result.status.phase == "Deploying" and cluster.deployed
    # a readout's query refused the same way is a definition error, not an outage
    client = PromClient(prom.url)
    with pytest.raises(PromQLRejected, match="parse error"):
        client.query(PQ.render(broken["queries"]["sumY"], "control", "60s"))
    client.close()


@pytest.mark.prometheus
def test_the_local_platform_asks_the_users_prometheus(stack, tmp_path):
    """`cambrian rollout --promql-url`: the local adapter checks the templates against that Prometheus (no rollout
    of its own runs yet); without the URL and before its own Prometheus starts, it cannot be asked."""
    from cambrian.operator.localstore import LocalStore
    from cambrian.operator.platform.base import MetricQueryRefused, MetricsUnavailable
    from cambrian.operator.platform.local import LocalPlatform

    _, _, prom = stack
    store = LocalStore(tmp_path / "run")
    spec = spec_with([SIGNUP], north="signup")
    bad = {"signup": 'sum(shop_exposed_users_total{arm="control"}) by'}
    p = LocalPlatform(tmp_path / "run", store, lambda: NOW, data_dir=tmp_path, promql_url=prom.url)
    p.check_promql("r1", PQ.check_queries(spec))  # parses
    with pytest.raises(MetricQueryRefused, match="spec.signup: Prometheus refuses the query: .*parse error"):
        p.check_promql("r1", bad)
    with pytest.raises(MetricsUnavailable, match="no Prometheus runs for rollout r1"):
        LocalPlatform(tmp_path / "run", store, lambda: NOW, data_dir=tmp_path).check_promql("r1", bad)


def test_an_evolutions_promql_metrics_reach_every_rollout_it_starts():
    import yaml

    from cambrian.operator.reconcile import evolution as E
    from cambrian.operator.reconcile.common import Meta
    from cambrian.operator.reconcile.observations import HypothesisView

    from pathlib import Path

    evo = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "examples" / "evolution.yaml").read_text())
    evo["spec"]["objective"]["promql"] = [SIGNUP]
    evo["spec"]["guardrails"] = [{"metric": "signup", "direction": "maximize", "margin": 0.1}]
    spec = api.parse_spec("Evolution", evo["spec"])
    st = api.EvolutionStatus(champion=api.Champion(bundle="pvc://b/champ"))
    ro = E._rollout_spec(Meta("evo", "u"), spec, st, HypothesisView("h1", "Scored", "optimizer", bundle_uri="pvc://b/h1"),
                         "evo-h1")
    assert [m.name for m in ro.metrics.promql] == ["signup"]
    q = PQ.queries(ro, api.RolloutStatus(started_at=NOW), NOW)
    assert q["treatment"]["signup/sum_y"] == 'sum(shop_signed_up_users_total{arm="treatment"})'
    with pytest.raises(ConfigError, match="defined both by its own query and as a promql metric"):
        api.parse_spec("Evolution", {**evo["spec"], "guardrails": [
            {"metric": "signup", "limit": 0.1, "query": 'x{arm="{{arm}}"}'}]})


@pytest.mark.prometheus
def test_the_client_caps_answers_and_a_readouts_time(stack):
    from cambrian.online.prometheus import PromClient, PrometheusUnavailable

    _, _, prom = stack
    _wait_for(prom.url, "up", 2)
    small = PromClient(prom.url, max_bytes=64)  # `up` over both targets answers more than 64 bytes
    with pytest.raises(PrometheusUnavailable, match="the answer is over 64 bytes"):
        small.query("up")
    small.close()
    client = PromClient(prom.url)
    assert len(client.query("up")) == 2
    with pytest.raises(PrometheusUnavailable, match="took over 0 s"):
        client.gauges({"control": {"a": "up", "b": "up"}}, budget_s=0)
    client.close()


def test_the_readme_examples_are_valid():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Metrics in PromQL over your own series"):]
    section = section[:section.index("\n## ")]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    metrics = api.RolloutMetrics.model_validate(blocks[0]["metrics"])
    assert [(m.name, m.kind) for m in metrics.promql] == [("watch", "mean"), ("latency_ms", "mean"),
                                                           ("signup", "proportion")]
    assert api.Guardrail.model_validate(blocks[1]["guardrails"][0]).query.count("{{arm}}") == 2
