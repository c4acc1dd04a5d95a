"""Benchmark `operator`: the pure parts (metrics parsing, timelines, manifests) and the quick run on the
real control plane (skipped when scripts/build-test-cluster.sh has not built it)."""

from __future__ import annotations

import pytest

from cambrian.bench import operator_scale as B

METRICS = """\
# HELP apiserver_flowcontrol_dispatched_requests_total [BETA] Number of requests executed
# TYPE apiserver_flowcontrol_dispatched_requests_total counter
apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",priority_level="exempt"} 573
apiserver_flowcontrol_dispatched_requests_total{flow_schema="cambrian-bench-operator",priority_level="exempt"} 12
apiserver_request_total{code="200",component="apiserver",dry_run="",group="cambrian.dev",resource="hypotheses",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="cambrian.dev",resource="hypotheses",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 1
apiserver_request_total{code="201",component="apiserver",dry_run="",group="batch",resource="jobs",scope="resource",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/healthz",verb="GET",version=""} 1
apiserver_request_duration_seconds_bucket{le="0.1",verb="GET"} 99
"""


def test_parse_counters_and_deltas_attribute_requests_to_the_flow_schema():
    names = ("apiserver_flowcontrol_dispatched_requests_total", "apiserver_request_total")
    before = B.parse_counters(METRICS, names)
    assert len(before) == 6  # the histogram and the comments are skipped
    after = B.parse_counters(METRICS.replace("} 12", "} 40").replace("} 7", "} 9"), names)
    d = B.delta(after, before)
    assert B.flow_requests(d, B.FLOW_SCHEMA) == 28
    assert B.flow_requests(d, "exempt") == 0
    # grouped across response codes; non-resource URLs (healthz) left out
    assert B.requests_by_resource(after) == {"PATCH hypotheses/status": 10, "POST jobs": 3}
    assert B.requests_by_resource(d) == {"PATCH hypotheses/status": 2}


def _audit(verb, resource, stage, code=201, sub=None, audit_id="a"):
    import json

    ref = {"resource": resource, "namespace": "ns", **({"subresource": sub} if sub else {})}
    return json.dumps({"kind": "Event", "level": "Metadata", "auditID": audit_id, "stage": stage, "verb": verb,
                       "requestURI": f"/api/v1/namespaces/ns/{resource}", "objectRef": ref,
                       "responseStatus": {"code": code}})


def test_audit_lines_count_each_request_once_by_verb_and_resource():
    lines = [_audit("create", "events", "ResponseComplete"), _audit("create", "events", "ResponseComplete"),
             _audit("patch", "hypotheses", "ResponseComplete", 200, "status"),
             _audit("create", "jobs", "ResponseComplete", 409),
             _audit("watch", "pods", "ResponseStarted", 200), _audit("watch", "pods", "ResponseComplete", 200),  # once
             _audit("get", "deployments", "ResponseStarted", 200), "",  # only long-running requests start
             '{"kind": "Event", "verb": "get", "stage": "ResponseComplete", "requestURI": "/version?timeout=32s",'
             ' "responseStatus": {"code": 200}}']
    by, failed = B.audit_requests(lines)
    assert by == {"create events": 2, "create jobs": 1, "get /version": 1, "patch hypotheses/status": 1,
                  "watch pods": 1}
    assert list(by)[0] == "create events"  # most first
    assert failed == {"create jobs 409": 1}


def test_timeline_tracks_first_phase_and_steady_phase_per_object():
    t = B.Timeline(n=2, steady=("Scored",))
    t.created.update({"a": 0.1, "b": 0.2})
    t.observe("a", None, 0.3)  # no phase yet: nothing recorded
    t.observe("a", "Training", 1.1)
    t.observe("a", "Training", 2.0)
    assert not t.complete()
    t.observe("a", "Scored", 16.1)
    t.observe("b", "Failed", 5.2)  # a final phase ends the wait but is counted apart
    assert t.complete()
    s = t.summary()
    assert s["seconds_to_first_phase_all"] == 5.2 and s["seconds_to_steady_all"] == 16.1
    assert s["first_phase_latency_p50_s"] == pytest.approx((1.0 + 5.0) / 2, abs=0.01)
    assert s["steady_phases"] == {"Scored": 1, "Failed": 1}


def test_timeline_cut_by_a_window_reports_only_what_it_saw():
    t = B.Timeline(n=3, steady=("Scored",))
    t.created.update({"a": 0.0, "b": 0.5, "c": 1.0})
    t.observe("a", "Training", 2.0)
    t.observe("b", "Training", 3.0)
    assert not t.all_have_a_phase()
    t.observe("c", "Training", 4.0)
    t.observe("a", "Scored", 20.0)
    assert t.all_have_a_phase() and not t.complete()
    s = t.summary()
    assert s["seconds_to_first_phase_all"] == 4.0
    assert s["seconds_to_steady_all"] is None and s["steady_objects"] == 1  # not a time to all steady
    assert s["steady_latency_max_s"] == 20.0


def test_window_ends_the_wait_only_once_every_object_has_a_phase():
    import asyncio
    import time

    t = B.Timeline(n=2, steady=("Scored",))
    t.observe("a", "Training", 0.1)

    async def wait(timeout):
        return await asyncio.wait_for(B._window_closed(t, time.perf_counter() - 10, 1.0, asyncio.Event()), timeout)

    with pytest.raises(asyncio.TimeoutError):  # the window has passed but b has no phase yet
        asyncio.run(wait(0.5))
    t.observe("b", "Proposed", 0.2)
    asyncio.run(wait(2.0))


def test_percentile_interpolates_and_refuses_empty():
    assert B.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert B.percentile([5], 0.99) == 5
    with pytest.raises(ValueError):
        B.percentile([], 0.5)


def test_manifests_are_valid_specs():
    from cambrian.operator import api

    evo = B.evolution_manifest("bench", "run-1")
    spec = api.parse_spec("Evolution", evo["spec"])
    assert spec.training.pod_annotations["kwok.cambrian.dev/exit-code"] == "0"
    hyp = B.hypothesis_manifest("bench-00001", "bench", "run-1", 1)
    assert hyp["metadata"]["labels"] == {B.RUN_LABEL: "run-1"}
    assert api.parse_spec("Hypothesis", hyp["spec"]).evolution_ref.name == "bench"
    warm = B.hypothesis_manifest("warmup", "bench", "run-1", 0, bench=False)
    assert B.RUN_LABEL not in warm["metadata"]["labels"]  # the watch's selector must not match it


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_on_the_real_control_plane():
    from cambrian.testing.cluster import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    r = B.run(quick=True)
    assert r["name"] == "operator" and r["quick"] is True and r["command"] == "cambrian bench run operator --quick"
    cam, base = r["cambrian"], r["baseline"]
    assert cam["steady_phases"] == {"Scored": 50}
    assert base["steady_phases"] == {"Proposed": 50}
    # Every object needs at least its status write from the operator; Cambrian also creates a Job
    # and a ConfigMap and reads the Job back, so it must count more requests than the no-op.
    assert base["requests_per_object"] >= 1
    assert cam["requests_per_object"] > base["requests_per_object"] + 2
    assert cam["all_clients_requests_by_resource"].get("POST jobs", 0) >= 50
    # the operator's own requests by verb from the audit log: the same requests the FlowSchema counted
    by = cam["operator_requests_by_verb_resource"]
    assert by["create jobs"] >= 50 and by["patch hypotheses/status"] >= 50
    assert base["operator_requests_by_verb_resource"]["patch hypotheses/status"] == 50
    for side in (cam, base):
        assert sum(side["operator_requests_by_verb_resource"].values()) == pytest.approx(side["operator_requests"], rel=0.02)
    # Scored needs a level-based timer tick (interval 15 s) after the Job finished.
    assert cam["seconds_to_steady_all"] >= r["operator_interval_s"]
    assert cam["seconds_to_first_phase_all"] <= cam["seconds_to_steady_all"]
    assert r["ratio"] == pytest.approx(cam["seconds_to_first_phase_all"] / base["seconds_to_first_phase_all"],
                                       rel=0.01)
    assert 50 < base["operator_rss_peak_mib"] and 50 < cam["operator_rss_peak_mib"]
    assert r["ratio_at_equal_create_times"] == pytest.approx(cam["seconds_to_first_phase_all"] / (
        cam["seconds_to_create_all"] + r["seconds_last_phase_after_last_create"]["baseline"]), rel=0.01)


def test_the_lag_after_the_last_create_reads_the_creates_out_of_the_ratio():
    """The no-op's first phases follow its creates: a half whose creates ran slower (the machine's load moved)
    had a bigger denominator. The lag is what each operator added after its last create."""
    assert B._lag({"seconds_to_first_phase_all": 21.7, "seconds_to_create_all": 20.1}) == pytest.approx(1.6)
    assert B._lag({"seconds_to_first_phase_all": 20.0, "seconds_to_create_all": 20.1}) == 0.0


def test_evolution_names_spread_the_objects_round_robin():
    assert B.evolution_names(1) == ["bench"]  # the 1,000-object run's single Evolution keeps its name
    assert B.evolution_names(3) == ["bench-0", "bench-1", "bench-2"]
    with pytest.raises(ValueError):
        B.evolution_names(0)
    with pytest.raises(ValueError, match="evolutions <= hypotheses"):
        B.run(hypotheses=5, evolutions=10)  # refused before any cluster starts
    with pytest.raises(ValueError, match="window must be positive"):
        B.run(hypotheses=5, window=0)


def test_bench_cli_passes_sizes_only_to_a_benchmark_that_takes_them(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from cambrian.bench import cli

    seen = {}
    monkeypatch.setattr(B, "run", lambda quick=False, hypotheses=None, evolutions=None, window=None: seen.update(
        quick=quick, hypotheses=hypotheses, evolutions=evolutions, window=window) or {"ratio": 1.0, "ratio_meaning": "m"})
    r = CliRunner().invoke(cli.app, ["run", "operator", "--hypotheses", "3000", "--evolutions", "10",
                                     "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen == {"quick": False, "hypotheses": 3000, "evolutions": 10, "window": None}
    r = CliRunner().invoke(cli.app, ["run", "operator", "--window", "900", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen["window"] == 900
    r = CliRunner().invoke(cli.app, ["run", "search", "--window", "900", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "takes no --window" in r.output
    assert (tmp_path / "operator-3000h-10e.json").exists()  # the 1,000-object result is not overwritten
    r = CliRunner().invoke(cli.app, ["run", "search", "--hypotheses", "10", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "takes no --hypotheses" in r.output
    r = CliRunner().invoke(cli.app, ["run", "operator", "--hypotheses", "5", "--evolutions", "10"])
    assert r.exit_code == 2 and "must not exceed" in r.output
