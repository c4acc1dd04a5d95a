"""Benchmark `operator`: N Hypothesis objects on the real test control plane, Cambrian's operator
against a minimal kopf operator, one after the other in the same cluster.

Control plane: cambrian.testing.cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok).
Each run gets its own namespace with one Evolution and one warm-up Hypothesis; once the operator
has reconciled those, N Hypotheses are created (16 POSTs in flight) and a watch records, per
object, when the operator first set `status.phase` and when it reached its steady phase:

- cambrian (`cambrian operator run`, shipped defaults, interval 15 s): steady = `Scored` (or a
  final Failed/Rejected, counted apart). Each Hypothesis is validated, its training Job created,
  kwok completes the pod with a termination message carrying metrics, and the Job's and Pod's
  watch events (operator/indexed.py) step the Hypothesis to Scored.
- baseline (`python -m cambrian.bench.operator_scale --baseline-operator`): a kopf operator whose
  only handler sets `status.phase = Proposed` on create; steady = that first phase.

Ratio = cambrian seconds to the first phase of all N / baseline seconds for the same (the same
event: a status written by the operator). Time to Scored and its per-object latencies are reported
beside it.

Requests are counted by the API server itself: each operator authenticates as its own
ServiceAccount, matched by a FlowSchema of its own (priority level `exempt`, the level the admin
user's requests get, so nothing is throttled differently), and
`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` from GET /metrics before and
after gives exactly that operator's requests (watches counted once, when opened). The by-resource
breakdown of `apiserver_request_total` (all clients, labels carry no user) is reported as context.
Memory is the operator process' RSS sampled every 0.2 s (psutil).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

GROUP, VERSION = "cambrian.dev", "v1alpha1"
RUN_LABEL = "cambrian.dev/bench-run"
FLOW_SCHEMA = "cambrian-bench-operator"
SA_NAMESPACE = "cambrian-bench"
OPERATOR_SA = "bench-operator"  # both operators, one after the other (FlowSchema and audit log match it)
CREATE_CONCURRENCY = 16
CAMBRIAN_STEADY = ("Scored",)
FINAL = ("Failed", "Rejected")  # steady too, but not the expected outcome
REPO = Path(__file__).resolve().parents[1]
TERMINATION = json.dumps({"v": 1, "metrics": {"val_loss": 0.5, "auc": 0.7}})


# --------------------------------------------------------------------------------------------
# Pure: manifests, metrics parsing, summaries
# --------------------------------------------------------------------------------------------

def evolution_manifest(name: str, run_id: str) -> dict:
    """An Evolution whose training pods kwok finishes at once with metrics in the termination message."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Evolution",
        "metadata": {"name": name, "labels": {RUN_LABEL: run_id}},
        "spec": {
            "objective": {"northStar": [{"name": "returning_users"}]},
            "agent": {"provider": "builtin"},
            "cadence": {"offline": "24h", "online": "24h"},
            "launchPolicy": "manual",
            "training": {"image": "cambrian/trainer:bench", "cpu": "10m", "memory": "64Mi",
                         "podAnnotations": {"kwok.cambrian.dev/exit-code": "0",
                                            "kwok.cambrian.dev/termination-message": TERMINATION}},
            "data": {"world": {"users": 100, "days": 3}},
        },
    }


def evolution_names(count: int) -> list[str]:
    """The run's Evolutions: `bench` alone (the 1,000-object run), else bench-0 .. bench-(count-1)."""
    if count < 1:
        raise ValueError(f"evolutions must be at least 1, got {count}")
    return ["bench"] if count == 1 else [f"bench-{k}" for k in range(count)]


def hypothesis_manifest(name: str, evolution: str, run_id: str, i: int, bench: bool = True) -> dict:
    labels = {RUN_LABEL: run_id} if bench else {f"{RUN_LABEL}-warmup": run_id}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Hypothesis",
        "metadata": {"name": name, "labels": labels},
        "spec": {"evolutionRef": {"name": evolution}, "component": "optimizer",
                 "explanation": f"AdamW with weight decay {1e-4 * (i + 1):.4g} (benchmark object {i})",
                 "delta": {"patch": {"name": "AdamW", "weight_decay": round(1e-4 * (i + 1), 6)}}},
    }


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} ([0-9.eE+-]+|NaN|\+Inf)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_counters(text: str, names: tuple[str, ...]) -> dict[tuple[str, frozenset], float]:
    """Samples of the named metrics in Prometheus text format: {(name, labels): value}."""
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line.startswith(names):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1) in names:
            out[(m.group(1), frozenset(_LABEL.findall(m.group(2))))] = float(m.group(3))
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def flow_requests(d: dict, flow_schema: str) -> int:
    return int(sum(v for (name, labels), v in d.items()
                   if name == "apiserver_flowcontrol_dispatched_requests_total"
                   and ("flow_schema", flow_schema) in labels))


def requests_by_resource(d: dict, top: int = 24) -> dict[str, int]:
    """apiserver_request_total deltas grouped as 'VERB resource[/subresource]' (all clients)."""
    acc: dict[str, float] = {}
    for (name, labels), v in d.items():
        if name != "apiserver_request_total":
            continue
        lab = dict(labels)
        if not lab.get("resource"):
            continue
        key = f"{lab.get('verb')} {lab['resource']}" + (f"/{lab['subresource']}" if lab.get("subresource") else "")
        acc[key] = acc.get(key, 0.0) + v
    return {k: int(v) for k, v in sorted(acc.items(), key=lambda kv: -kv[1])[:top]}


def audit_requests(lines: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
    """One client's requests from API server audit-log lines (JSON, level Metadata), counted once each (a watch
    when it opens, any other request when it completes): ({"verb resource[/subresource]": n}, the failed ones
    as {"verb resource[/subresource] code": n})."""
    by: dict[str, int] = {}
    failed: dict[str, int] = {}
    for line in lines:
        if not line.strip():
            continue
        ev = json.loads(line)
        verb, stage = ev.get("verb", "?"), ev.get("stage")
        if stage != ("ResponseStarted" if verb == "watch" else "ResponseComplete") and stage != "Panic":
            continue
        ref = ev.get("objectRef") or {}
        what = (ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")) \
            if ref.get("resource") else ev.get("requestURI", "?").split("?")[0]
        key = f"{verb} {what}"
        by[key] = by.get(key, 0) + 1
        code = (ev.get("responseStatus") or {}).get("code", 0)
        if code >= 400 or stage == "Panic":
            failed[f"{key} {code}"] = failed.get(f"{key} {code}", 0) + 1
    order = lambda d: dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))  # noqa: E731
    return order(by), order(failed)


LATENCY_PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


def percentile(values: list[float], q: float) -> float:
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Timeline:
    """Per-object times (seconds since the first create was sent) seen through the watch."""

    n: int
    steady: tuple[str, ...]
    created: dict[str, float] = field(default_factory=dict)
    first_phase: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    final_phase: dict[str, str] = field(default_factory=dict)
    watch_errors: list[str] = field(default_factory=list)

    def observe(self, name: str, phase: str | None, t: float) -> None:
        if not phase:
            return
        self.first_phase.setdefault(name, t)
        if phase in self.steady or phase in FINAL:
            self.done.setdefault(name, t)
            self.final_phase[name] = phase

    def complete(self) -> bool:
        return len(self.done) >= self.n

    def all_have_a_phase(self) -> bool:
        return len(self.first_phase) >= self.n

    def summary(self) -> dict[str, Any]:
        lat_first = [self.first_phase[k] - self.created[k] for k in self.first_phase if k in self.created]
        lat_done = [self.done[k] - self.created[k] for k in self.done if k in self.created]
        phases: dict[str, int] = {}
        for p in self.final_phase.values():
            phases[p] = phases.get(p, 0) + 1
        out: dict[str, Any] = {
            "objects": self.n,
            "seconds_to_create_all": round(max(self.created.values()), 2),
            "seconds_to_first_phase_all": round(max(self.first_phase.values()), 2),
            # None when a window ended the run first (then the steady latencies are those of the steady ones)
            "seconds_to_steady_all": round(max(self.done.values()), 2) if self.complete() else None,
            "steady_objects": len(self.done),
        }
        # per-object latencies (seconds from its create to the event), as percentiles
        for what, lat in (("first_phase", lat_first), ("steady", lat_done)):
            for label, q in LATENCY_PERCENTILES:
                out[f"{what}_latency_{label}_s"] = round(percentile(lat, q), 2) if lat else None
        out["steady_phases"] = phases
        return out


# --------------------------------------------------------------------------------------------
# I/O: the cluster, the operator process, the watch
# --------------------------------------------------------------------------------------------

def _admin_ssl(cluster) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cluster.pki.ca_cert))
    ctx.load_cert_chain(str(cluster.pki.admin_cert), str(cluster.pki.admin_key))
    return ctx


def scrape(cluster, ctx: ssl.SSLContext) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{cluster.server}/metrics", context=ctx, timeout=30) as r:
        text = r.read().decode()
    return parse_counters(text, ("apiserver_flowcontrol_dispatched_requests_total", "apiserver_request_total"))


def setup_identity(cluster, work: Path) -> Path:
    """A ServiceAccount (cluster-admin) and a FlowSchema matching only it; returns its kubeconfig."""
    sa = OPERATOR_SA
    cluster.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SA_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": SA_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "cambrian-bench-operator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": SA_NAMESPACE}]},
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": FLOW_SCHEMA},
         "spec": {"priorityLevelConfiguration": {"name": "exempt"}, "matchingPrecedence": 50,
                  "rules": [{"subjects": [{"kind": "ServiceAccount",
                                           "serviceAccount": {"name": sa, "namespace": SA_NAMESPACE}}],
                             "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                "clusterScope": True, "namespaces": ["*"]}],
                             "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
    ])
    token = cluster.kubectl("create", "token", sa, "-n", SA_NAMESPACE, "--duration=6h").stdout.strip()
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    cfg["users"] = [{"name": "bench-operator", "user": {"token": token}}]
    cfg["contexts"][0]["context"]["user"] = "bench-operator"
    path = work / "operator-kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    # The API server picks the FlowSchema up asynchronously: wait until a request is counted under it.
    ctx = _admin_ssl(cluster)
    env = {**cluster.env(), "KUBECONFIG": str(path)}

    def counted() -> bool:
        subprocess.run([str(cluster.bin_dir / "kubectl"), "get", "ns", SA_NAMESPACE], env=env,
                       capture_output=True, timeout=30, check=True)
        return flow_requests(scrape(cluster, ctx), FLOW_SCHEMA) > 0
    cluster.wait_for(f"FlowSchema {FLOW_SCHEMA} in effect", counted, timeout=60, interval=1)
    return path


def install_crds(cluster) -> None:
    for p in sorted((REPO / "crds").glob("*.cambrian.dev.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(p))
    for plural in ("evolutions", "hypotheses", "rollouts"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.{GROUP}", "--timeout=60s")


@dataclass
class Operator:
    proc: subprocess.Popen
    log: Path
    peak_rss: int = 0
    idle_rss: int = 0

    def sample(self) -> int:
        import psutil

        try:
            rss = psutil.Process(self.proc.pid).memory_info().rss
        except psutil.Error:
            return self.peak_rss
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_operator(kind: str, namespace: str, kubeconfig: Path, cluster, work: Path, interval: float) -> Operator:
    if kind == "cambrian":
        cmd = [sys.executable, "-m", "cambrian.cli", "operator", "run", "--namespace", namespace,
               "--interval", str(interval)]
    else:
        cmd = [sys.executable, "-m", "cambrian.bench.operator_scale", "--baseline-operator", namespace]
    log = work / f"operator-{kind}.log"
    # CAMBRIAN_METRICS_PORT=0: the operator's exporter on a free port (8000 may be taken on a shared machine)
    env = {**cluster.env(), "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", "CAMBRIAN_METRICS_PORT": "0"}
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=work)
    return Operator(proc, log)


async def _watch(client, url: str, timeline: Timeline, t0: list[float], stop: asyncio.Event) -> None:
    """Follow the run's Hypotheses; t0[0] is the time the first create was sent (set later)."""
    import httpx

    rv = None
    while not stop.is_set():
        params = {"watch": "1", "labelSelector": f"{RUN_LABEL}", "timeoutSeconds": "600"}
        if rv:
            params["resourceVersion"] = rv
        try:
            async with client.stream("GET", url, params=params, timeout=None) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":  # e.g. 410 Gone: start again from a fresh list
                        timeline.watch_errors.append(str(obj.get("message") or obj)[:200])
                        rv = None
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        now = time.perf_counter()
                        timeline.observe(obj["metadata"]["name"], (obj.get("status") or {}).get("phase"),
                                         now - t0[0] if t0[0] else 0.0)
                    if timeline.complete():
                        stop.set()
                        return
        except (httpx.HTTPError, ValueError) as e:  # a dropped stream is reopened where it left off
            timeline.watch_errors.append(f"{type(e).__name__}: {e}"[:200])
            await asyncio.sleep(0.2)


async def _create_and_wait(cluster, namespace: str, evolutions: list[str], run_id: str, n: int, steady: tuple,
                           op: Operator, timeout: float, window: float | None = None) -> Timeline:
    """Create the n objects and follow them until all are steady, or (`window`) until all have a first phase and
    `window` seconds have passed since the first create, whichever comes first."""
    import httpx

    base = f"{cluster.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/hypotheses"
    timeline = Timeline(n=n, steady=steady)
    t0 = [0.0]
    stop = asyncio.Event()
    async with httpx.AsyncClient(verify=_admin_ssl(cluster), timeout=60,
                                 limits=httpx.Limits(max_connections=CREATE_CONCURRENCY + 2)) as client:
        watcher = asyncio.create_task(_watch(client, base, timeline, t0, stop))
        await asyncio.sleep(0.5)  # the watch is open before the first create
        sem = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def create(i: int) -> None:
            name = f"bench-{i:05d}"
            async with sem:
                evolution = evolutions[i % len(evolutions)]  # round robin: each Evolution gets n / len of them
                r = await client.post(base, json=hypothesis_manifest(name, evolution, run_id, i))
                if r.status_code != 201:
                    raise RuntimeError(f"creating {name}: HTTP {r.status_code}: {r.text[:300]}")
                timeline.created[name] = time.perf_counter() - t0[0]

        async def sample_rss() -> None:
            while not stop.is_set():
                op.sample()
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_rss())
        t0[0] = time.perf_counter()
        creators = asyncio.gather(*(create(i) for i in range(n)))
        try:
            await asyncio.wait_for(creators, timeout)
            left = timeout - (time.perf_counter() - t0[0])
            if window is None:
                await asyncio.wait_for(stop.wait(), max(1.0, left))
            else:
                await asyncio.wait_for(_window_closed(timeline, t0[0], window, stop), max(1.0, left))
        except asyncio.TimeoutError:
            seen = cluster.kubectl("get", "hypotheses", "-n", namespace, "-o",
                                   "jsonpath={range .items[*]}{.status.phase}/{.status.conditions[-1].reason} {end}",
                                   check=False).stdout.split()
            stuck = {p: seen.count(p) for p in sorted(set(seen))}  # phase/last condition reason -> count
            raise RuntimeError(f"{len(timeline.done)}/{n} objects steady after {timeout:.0f}s "
                               f"({len(timeline.first_phase)} with a phase; now {stuck}; watch errors {timeline.watch_errors[-3:]}); operator log:\n{op.tail()}") from None
        finally:
            stop.set()
            watcher.cancel()
            sampler.cancel()
            for task in (watcher, sampler):
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - cancelled on purpose
                    pass
    return timeline


async def _window_closed(timeline: Timeline, t0: float, window: float, stop: asyncio.Event) -> None:
    while not stop.is_set() and not (timeline.all_have_a_phase() and time.perf_counter() - t0 >= window):
        await asyncio.sleep(0.2)


def _until_quiet(cluster, ctx: ssl.SSLContext, quiet: float = 3.0, limit: float = 60.0) -> float:
    """Wait until the operator has sent no request for `quiet` seconds (at most `limit`), so that requests it
    still sends for the objects (events posted in the background, a last settled step) are counted too."""
    start = last_change = time.monotonic()
    seen = flow_requests(scrape(cluster, ctx), FLOW_SCHEMA)
    while time.monotonic() - last_change < quiet and time.monotonic() - start < limit:
        time.sleep(0.5)
        now = flow_requests(scrape(cluster, ctx), FLOW_SCHEMA)
        if now != seen:
            seen, last_change = now, time.monotonic()
    return round(time.monotonic() - start, 1)


def _audit_size(cluster) -> int:
    return cluster.audit_log.stat().st_size if cluster.audit_log and cluster.audit_log.exists() else 0


def _audit_lines(cluster, start: int, end: int) -> list[str]:
    """The audit log written between two sizes (blocking mode: a request is logged before it is answered)."""
    if not cluster.audit_log or end <= start:
        return []
    with open(cluster.audit_log, "rb") as f:
        f.seek(start)
        return f.read(end - start).decode().splitlines()


def _phase(cluster, namespace: str, kind: str, name: str) -> str | None:
    r = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False)
    return r.stdout.strip() or None if r.returncode == 0 else None


def measure(kind: str, cluster, kubeconfig: Path, work: Path, n: int, interval: float, timeout: float,
            steady_window: float, evolutions: int = 1, window: float | None = None) -> dict[str, Any]:
    """One operator, one namespace: warm up, create n Hypotheses across the Evolutions, wait until all are steady
    (or, with `window`, until all have a first phase and `window` seconds passed: see _create_and_wait)."""
    namespace = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    run_id = namespace
    names = evolution_names(evolutions)
    cluster.kubectl("create", "namespace", namespace)
    op = start_operator(kind, namespace, kubeconfig, cluster, work, interval)
    try:
        cluster.apply([*({**evolution_manifest(e, run_id), "metadata": {
            "name": e, "namespace": namespace, "labels": {RUN_LABEL + "-evolution": run_id}}} for e in names),
            {**hypothesis_manifest("warmup", names[0], run_id, 0, bench=False),
             "metadata": {"name": "warmup", "namespace": namespace}}])

        def warm() -> bool:
            if op.proc.poll() is not None:
                raise RuntimeError(f"{kind} operator exited {op.proc.returncode}:\n{op.tail()}")
            return _phase(cluster, namespace, "hypothesis", "warmup") is not None and (
                kind != "cambrian" or all(_phase(cluster, namespace, "evolution", e) is not None for e in names))
        cluster.wait_for(f"{kind} operator reconciling the warm-up objects", warm, timeout=120, interval=0.5)
        time.sleep(2.0)  # let the warm-up's follow-up writes settle before the counters are read
        op.idle_rss = op.sample()
        ctx = _admin_ssl(cluster)
        before, cpu_before = scrape(cluster, ctx), op.cpu_seconds()
        audit_before = _audit_size(cluster)
        steady = CAMBRIAN_STEADY if kind == "cambrian" else ("Proposed",)
        timeline = asyncio.run(_create_and_wait(cluster, namespace, names, run_id, n, steady, op, timeout, window))
        # a run ended by its window is not going quiet (steps still run): its requests are the window's
        quiet_after = _until_quiet(cluster, ctx) if timeline.complete() else 0.0
        after, cpu_after = scrape(cluster, ctx), op.cpu_seconds()
        by_verb, failed = audit_requests(_audit_lines(cluster, audit_before, _audit_size(cluster)))
        d = delta(after, before)
        reqs = flow_requests(d, FLOW_SCHEMA)
        result = {
            **timeline.summary(),
            "operator_requests": reqs,
            "seconds_until_operator_quiet": quiet_after,
            "requests_per_object": round(reqs / n, 2),
            "operator_cpu_seconds": round(cpu_after - cpu_before, 2),
            "operator_cpu_ms_per_object": round(1000 * (cpu_after - cpu_before) / n, 1),
            "operator_cpu_seconds_per_object": round((cpu_after - cpu_before) / n, 4),
            "operator_rss_idle_mib": round(op.idle_rss / 2**20, 1),
            "operator_rss_peak_mib": round(op.peak_rss / 2**20, 1),
            "operator_rss_kib_per_object": round((op.peak_rss - op.idle_rss) / 1024 / n, 1),
            # the operator's own requests by verb and resource, from the API server's audit log (same window)
            "operator_requests_by_verb_resource": by_verb,
            "operator_requests_per_object_by_verb_resource": {k: round(v / n, 2) for k, v in by_verb.items()},
            "operator_failed_requests": failed,
            "all_clients_requests_by_resource": requests_by_resource(d),
            "namespace": namespace,
        }
        if not timeline.complete():
            result["window_s"] = window
            result["window_note"] = (f"stopped {window:.0f} s after the first create with {len(timeline.done)} of {n} "
                                     "objects steady: requests, CPU and RSS cover that window only, not whole lives")
        if steady_window > 0 and timeline.complete():
            # Level-based timers keep running on Scored objects: the idle cost of n objects.
            b = scrape(cluster, ctx)
            time.sleep(steady_window)
            op.sample()
            idle = flow_requests(delta(scrape(cluster, ctx), b), FLOW_SCHEMA)
            result["steady_window_s"] = steady_window
            result["steady_requests_per_object_per_minute"] = round(idle / n / steady_window * 60, 2)
            result["operator_rss_peak_mib"] = round(op.peak_rss / 2**20, 1)
        return result
    finally:
        op.stop()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def operator_code() -> dict[str, Any]:
    """Which operator code was measured: a hash of operator/**/*.py, the commit, and whether
    operator/ differs from it (it is edited while benchmarks run)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((REPO / "operator").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    out: dict[str, Any] = {"sha256_operator_py": h.hexdigest()[:16]}
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,  # noqa: E731
                                        timeout=30).stdout.strip()
        out["commit"] = git("rev-parse", "--short", "HEAD")
        out["operator_uncommitted_changes"] = bool(git("status", "--porcelain", "--", "operator"))
    except (OSError, subprocess.SubprocessError):
        pass
    return out


DEFAULT_OBJECTS, QUICK_OBJECTS = 1000, 50


def _lag(arm: dict) -> float:
    """Seconds from an operator's last create to its last first phase."""
    return max(0.0, arm["seconds_to_first_phase_all"] - arm["seconds_to_create_all"])


def run(quick: bool = False, hypotheses: int | None = None, evolutions: int | None = None,
        window: float | None = None) -> dict:
    """`hypotheses` (default 1000, quick 50) spread round robin over `evolutions` (default 1) in each namespace.
    `window` (seconds): each operator is followed until all objects are steady, or until every object has its
    first phase and `window` seconds have passed since the first create (whichever is first): at 10,000
    objects Scored takes over an hour on 2 cores, the first phase minutes."""
    from cambrian.testing.cluster import start_cluster

    n = hypotheses or (QUICK_OBJECTS if quick else DEFAULT_OBJECTS)
    n_evolutions = evolutions or 1
    if n < 1 or n_evolutions < 1 or n_evolutions > n:
        raise ValueError(f"need 1 <= evolutions <= hypotheses, got {n_evolutions} and {n}")
    if window is not None and window <= 0:
        raise ValueError(f"window must be positive seconds, got {window}")
    interval = 15.0  # the operator's shipped default (CAMBRIAN_OPERATOR_INTERVAL)
    # the 1000-object run took 302 s to Scored: 1.5 s per object leaves room on a loaded machine
    timeout = 90.0 if quick and not hypotheses else max(1500.0, 1.5 * n)
    load_start = _load()
    code = operator_code()
    started = time.perf_counter()
    # Plenty of fake GPUs and pods so that scheduling does not cap the training Jobs.
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-operator-") as tmp, \
            start_cluster(gpu_nodes=4, gpus_per_node=256, cpu_nodes=0,
                          audit_users=(f"system:serviceaccount:{SA_NAMESPACE}:{OPERATOR_SA}",)) as cluster:
        work = Path(tmp)
        cluster_seconds = time.perf_counter() - started
        install_crds(cluster)
        kubeconfig = setup_identity(cluster, work)
        baseline = measure("baseline", cluster, kubeconfig, work, n, interval, timeout, 0.0, n_evolutions, window)
        cambrian = measure("cambrian", cluster, kubeconfig, work, n, interval, timeout,
                           0.0 if quick else 2 * interval, n_evolutions, window)
    sizes = (f" --hypotheses {n}" if hypotheses else "") + (f" --evolutions {n_evolutions}" if evolutions else "") \
        + (f" --window {window:g}" if window else "")
    return {
        "name": "operator",
        "command": "cambrian bench run operator" + (" --quick" if quick else "") + sizes,
        "quick": quick,
        "objects": n,
        "evolutions": n_evolutions,
        "operator_interval_s": interval,
        "cluster_start_seconds": round(cluster_seconds, 1),
        "cambrian": cambrian,
        "baseline": baseline,
        "cambrian_steady_phase": "Scored (training Job created, finished by kwok, metrics read back)",
        "baseline_steady_phase": "Proposed (the no-op operator's only write)",
        "ratio": round(cambrian["seconds_to_first_phase_all"] / baseline["seconds_to_first_phase_all"], 3),
        "ratio_meaning": "seconds until every Hypothesis has an operator-set status.phase: Cambrian / "
                         "no-op kopf operator (>1: Cambrian slower)",
        # the creates' pace moves with the machine's load between the two halves, and the no-op's first phases follow
        # its creates: the same ratio as if both halves' creates had taken Cambrian's time
        "seconds_last_phase_after_last_create": {"cambrian": round(_lag(cambrian), 2), "baseline": round(_lag(baseline), 2)},
        "ratio_at_equal_create_times": round(cambrian["seconds_to_first_phase_all"]
                                             / (cambrian["seconds_to_create_all"] + _lag(baseline)), 3),
        "requests_per_object_ratio": round(cambrian["requests_per_object"] / baseline["requests_per_object"], 2),
        "rss_peak_ratio": round(cambrian["operator_rss_peak_mib"] / baseline["operator_rss_peak_mib"], 2),
        "operator_code": code,
        "operator_code_changed_during_run": operator_code()["sha256_operator_py"] != code["sha256_operator_py"],
        "window_s": window,
        "load_avg_1_5_15_start": load_start,
        "load_avg_1_5_15_end": _load(),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


# --------------------------------------------------------------------------------------------
# The baseline operator: `python -m cambrian.bench.operator_scale --baseline-operator NAMESPACE`
# --------------------------------------------------------------------------------------------

def _baseline_operator(namespace: str) -> None:
    import logging

    import kopf

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # as Cambrian's operator: no per-handler Events

    @kopf.on.login()
    def login(**kwargs: Any) -> Any:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create(GROUP, VERSION, "hypotheses")
    def created(patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Proposed"

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(kopf.operator(standalone=True, namespaces=[namespace], clusterwide=False))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline-operator":
        _baseline_operator(sys.argv[2])
    else:
        sys.exit("usage: python -m cambrian.bench.operator_scale --baseline-operator NAMESPACE")
