"""Every dashboard query against a live Prometheus that scrapes the online loop's real exporters.

The data comes from the same code the online loop runs: the simulated world's users
(cambrian.world.sim.World) driven by cambrian.online.traffic.TrafficDriver through the real router
(cambrian.online.router.Router) to real model servers (cambrian.online.server.ModelServer, with a
tiny deterministic scorer standing in for a trained bundle), events and exposures into the real
collector (cambrian.online.collector), all scraped by /usr/bin/prometheus started through
cambrian.online.prometheus.PrometheusProcess. No metric is written by hand here.
"""

from __future__ import annotations

import math
import re
import time

import httpx
import pytest

from cambrian import dashboards
from cambrian.testing.scorers import ModScorer

pytestmark = pytest.mark.prometheus

METRIC_RE = re.compile(r"\b(cambrian_[a-z0-9_]+)\b")
EXPERIMENT = "exp-live"
RATE_WINDOW = "30s"


def _concrete(expr: str) -> str:
    values = {"experiment": EXPERIMENT, "metric": "watch_minutes", "control": "control", "evolution": ".*"}
    out = expr.replace("$__rate_interval", RATE_WINDOW)
    for name, value in values.items():
        out = out.replace("$" + name, value)
    assert "$" not in out, out
    return out


def _online_only(expr: str) -> bool:
    return all(dashboards.METRICS[m] != "operator" for m in METRIC_RE.findall(expr))


def _queries() -> list[tuple[str, str, str]]:
    return [(d["uid"], p["title"], t["expr"]) for d in dashboards.generate().values()
            for p in d["panels"] if p["type"] != "row" for t in p["targets"]]


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory):
    from cambrian.online.collector import Collector, Store
    from cambrian.online.prometheus import PrometheusProcess, find_prometheus
    from cambrian.online.router import Router, RouterConfig
    from cambrian.online.runner import BackgroundApp
    from cambrian.online.server import ModelServer
    from cambrian.online.traffic import TrafficDriver
    from cambrian.world.params import WorldParams
    from cambrian.world.sim import World

    try:
        find_prometheus()
    except Exception as exc:  # noqa: BLE001 - PrometheusNotInstalled carries the install hint
        pytest.skip(str(exc))
    tmp = tmp_path_factory.mktemp("live")
    apps = []
    try:
        servers = {}
        for arm, a in (("control", 1), ("treatment", 3)):
            servers[arm] = BackgroundApp.of(ModelServer(ModScorer(a), model=f"mod{a}", arm=arm)).start()
            apps.append(servers[arm])
        coll = BackgroundApp(Collector(Store(tmp / "collector.sqlite")).app()).start()
        apps.append(coll)
        cfg = RouterConfig.from_dict({"experiment": EXPERIMENT, "collector": coll.url, "arms": [
            {"name": "control", "url": servers["control"].url, "weight": 50, "control": True},
            {"name": "treatment", "url": servers["treatment"].url, "weight": 50}]})
        router = BackgroundApp.of(Router(cfg)).start()
        apps.append(router)
        host = lambda app: f"127.0.0.1:{app.admin_port or app.port}"  # noqa: E731  (metrics: the admin port)
        operator_port = _operator_demo_metrics()
        with PrometheusProcess({"model-servers": [host(s) for s in servers.values()], "router": [host(router)],
                                "collector": [host(coll)], "operator": [f"127.0.0.1:{operator_port}"]},
                               workdir=tmp / "prometheus") as prom:
            world = World(WorldParams.build(n_users=150, n_items=120, n_candidates=30, max_steps_per_day=10), seed=5)
            driver = TrafficDriver(world, router.url, coll.url, router_admin_url=router.admin_url, seconds_per_day=2.0,
                                   batch_size=64, run_id=EXPERIMENT)
            for _ in range(3):  # three closed days, spread over several scrapes
                driver.run_day()
            # A malformed request straight to a server: its error counter moves too.
            httpx.post(servers["control"].url + "/rank", json={"user_ids": [1]}, timeout=5)
            driver.close()
            _wait_for(prom.url, f'count(cambrian_arm_stat{{experiment="{EXPERIMENT}"}}) > 0 and '
                                f'count(rate(cambrian_server_users_total[{RATE_WINDOW}]) > 0) > 0')
            yield prom.url
    finally:
        for app in reversed(apps):
            app.stop()


def _operator_demo_metrics() -> int:
    """The operator's real exporter (cambrian.operator.metrics) filled through its observe_* functions
    with a small demo evolution: hypotheses in several phases, capped budgets, one guardrail verdict."""
    from datetime import datetime, timedelta, timezone

    from cambrian.operator import metrics as op
    from cambrian.operator.reconcile.observations import Effect

    port = op.serve(0, addr="127.0.0.1")
    now = datetime.now(timezone.utc)
    created = (now - timedelta(minutes=20)).isoformat()
    phases = ["Proposed", "Validated", "Training", "Scored", "Scored", "Live", "Launched", "Failed", "Rejected"]
    hyps = [{"metadata": {"name": f"h{i}", "creationTimestamp": created}, "status": {"phase": p}}
            for i, p in enumerate(phases)]
    op.observe_evolution("demo", hyps, {"tokens": 100000, "dollars": 20.0, "gpuHours": 8.0},
                         {"tokens": 41000, "dollars": 7.5, "gpuHours": 2.25}, now)
    op.observe_guardrails(EXPERIMENT, [("treatment", "hate_rate", False)])
    op.observe_effects(EXPERIMENT, [Effect("treatment", "watch_minutes", 0.021, -0.012, 0.055, True, 0.3, 0.048)])
    return port


def _query(url: str, expr: str, at: float | None = None) -> dict:
    """An instant query, evaluated now or at `at` (Unix seconds)."""
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    r = httpx.get(url + "/api/v1/query", params=params, timeout=10)
    assert r.status_code == 200, f"{expr}: HTTP {r.status_code} {r.text[:500]}"
    return r.json()


def _wait_for(url: str, expr: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _query(url, expr)["data"]["result"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never answered {expr!r} with data")


def test_every_online_panel_query_returns_series(live_prometheus):
    checked, empty = 0, []
    for uid, title, expr in _queries():
        if not _online_only(expr):
            continue
        body = _query(live_prometheus, _concrete(expr))
        assert body["status"] == "success", (uid, title, body)
        result = body["data"]["result"]
        rows = result if body["data"]["resultType"] == "vector" else [{"value": result}]
        values = [float(r["value"][1]) for r in rows]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{uid} / {title}: {_concrete(expr)} -> {result}")
        checked += 1
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    assert checked >= 25


def test_effect_panel_matches_the_collector_statistics(live_prometheus):
    """The lift panel's PromQL agrees with the same arithmetic on the exported sums. Every query is evaluated at
    one instant, so all read the same scrape (the collector may still publish a later day between two queries)."""
    at = time.time()
    lift = {r["metric"]["arm"]: float(r["value"][1])
            for r in _query(live_prometheus, _concrete(dashboards.lift()), at)["data"]["result"]}
    sums = {}
    for r in _query(live_prometheus, f'cambrian_arm_stat{{experiment="{EXPERIMENT}", metric="watch_minutes"}}',
                    at)["data"]["result"]:
        sums.setdefault(r["metric"]["arm"], {})[r["metric"]["stat"]] = float(r["value"][1])
    mean = {a: s["sum_y"] / s["n"] for a, s in sums.items()}
    assert set(lift) == {"treatment"}
    assert lift["treatment"] == pytest.approx(mean["treatment"] / mean["control"] - 1, rel=1e-9)
    lo = float(_query(live_prometheus, _concrete(dashboards.lift_bound("-")), at)["data"]["result"][0]["value"][1])
    hi = float(_query(live_prometheus, _concrete(dashboards.lift_bound("+")), at)["data"]["result"][0]["value"][1])
    assert lo < lift["treatment"] < hi


def test_operator_panel_queries(live_prometheus):
    """Panels on the operator's metrics (names fixed by the chart's PrometheusRule) against its exporter."""
    _wait_for(live_prometheus, 'count(cambrian_hypothesis_phase{evolution="demo"}) > 0')
    checked, empty = 0, []
    for uid, title, expr in _queries():
        if _online_only(expr):
            continue
        body = _query(live_prometheus, _concrete(expr))
        assert body["status"] == "success", (uid, title, body)
        values = [float(r["value"][1]) for r in body["data"]["result"]]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{uid} / {title}: {_concrete(expr)} -> {body['data']['result']}")
        checked += 1
    assert not empty, "operator panel queries without data:\n" + "\n".join(empty)
    assert checked >= 15
    in_flight = _query(live_prometheus, 'sum(cambrian_hypothesis_phase{evolution="demo", phase=~"Proposed|Validated|Training"})')
    assert float(in_flight["data"]["result"][0]["value"][1]) == 3
    tokens = _query(live_prometheus, 'cambrian_budget_remaining{evolution="demo", kind="tokens"}')
    assert float(tokens["data"]["result"][0]["value"][1]) == 59000
