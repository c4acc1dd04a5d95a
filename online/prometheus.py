"""A real Prometheus process on loopback, and a small PromQL client that reads the experiment back.

    with PrometheusProcess({"collector": ["127.0.0.1:9001"], "router": [...]}) as prom:
        client = PromClient(prom.url)
        readout = client.read_experiment("exp1")   # SufficientStats / RatioStats per arm and metric

The analysis reads everything through the HTTP API (never from the exporters directly), so the
local mode exercises the same path as a cluster. An unreachable Prometheus raises PrometheusUnavailable:
the caller must then make no decision.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import httpx
import yaml

from cambrian.errors import CambrianError
from cambrian.online.services import stop_process
from cambrian.stats.sums import RatioStats, SufficientStats


class PrometheusNotInstalled(CambrianError):
    def __init__(self) -> None:
        super().__init__("the prometheus binary was not found on PATH",
                         hint="install it: apt-get install -y --no-install-recommends prometheus "
                              "(or put a Prometheus 2.x binary on PATH)")


class PrometheusUnavailable(CambrianError):
    """Prometheus did not answer (down, starting, or the query failed): make no decision."""


class PromQLRejected(CambrianError):
    """Prometheus refused a query as malformed (HTTP 400 bad_data: its own parser): a definition error, which
    waiting does not cure."""


MAX_ANSWER_BYTES = 4 * 1024 * 1024  # one readout's answer; more means a query selects far more than one arm
MAX_READOUT_SECONDS = 60.0  # all of one readout's own-series queries together


def find_prometheus() -> str:
    path = shutil.which("prometheus")
    if not path:
        raise PrometheusNotInstalled()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_config(targets: Mapping[str, list[str]], interval: str = "1s") -> dict:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                           for job, hosts in targets.items()],
    }


class PrometheusProcess:
    """Starts /usr/bin/prometheus (or whatever is on PATH) with a generated config and a temp TSDB."""

    def __init__(self, targets: Mapping[str, list[str]], port: int | None = None, workdir: str | Path | None = None,
                 interval: str = "1s", retention: str = "1d", start_timeout: float = 60):
        self.binary = find_prometheus()
        self.start_timeout = start_timeout  # `with`: how long start() waits for readiness and every target
        self.targets = dict(targets)
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cambrian-prom-"))
        self.interval, self.retention = interval, retention
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 60, wait_targets: bool = True) -> "PrometheusProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(scrape_config(self.targets, self.interval)))
        (self.workdir / "data").mkdir(exist_ok=True)
        self._log = open(self.workdir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--storage.tsdb.retention.time={self.retention}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)
        if wait_targets:
            self.wait_targets(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise CambrianError(f"prometheus exited with code {self.proc.returncode}; see {self.workdir / 'prometheus.log'}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise CambrianError(f"prometheus not ready after {timeout:g} s; see {self.workdir / 'prometheus.log'}")

    def wait_targets(self, timeout: float = 30) -> None:
        """Wait until every target has been scraped successfully once (`up == 1` for all)."""
        want = sum(len(v) for v in self.targets.values())
        deadline = time.monotonic() + timeout
        up: list = []
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + "/api/v1/query", params={"query": "up"}, timeout=2).json()
                up = r["data"]["result"]
                if len(up) >= want and all(s["value"][1] == "1" for s in up):
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        down = [s["metric"].get("instance") for s in up if s["value"][1] != "1"]
        raise CambrianError(f"prometheus: not every target is up after {timeout:g} s (down: {down or 'not yet scraped'}"
                            f"{self._scrape_errors()})")

    def _scrape_errors(self) -> str:
        """The targets' last scrape errors, for the message of a start that timed out."""
        try:
            targets = httpx.get(self.url + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
        except (httpx.HTTPError, KeyError, ValueError):
            return ""
        errors = [f"{t.get('scrapeUrl')}: {t.get('lastError')}" for t in targets if t.get("lastError")]
        return f"; {'; '.join(errors)[:500]}" if errors else ""

    def stop(self, timeout: float = 15) -> None:
        """Stop by PID (SIGTERM, then SIGKILL), and remove the temp TSDB if we created it."""
        stop_process(self.proc, timeout)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "PrometheusProcess":
        try:
            return self.start(self.start_timeout)
        except BaseException:  # __exit__ does not run when __enter__ fails: stop what start() left running
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class ExperimentReadout:
    """What the analysis needs for one look, all read at one evaluation instant."""

    experiment: str
    time: float
    closed_day: int
    stats: dict[str, dict[str, SufficientStats | RatioStats]]   # arm -> metric -> sums
    exposures: dict[str, int]                                  # arm -> users ever exposed
    cohorts: dict[int, dict[str, int]] = field(default_factory=dict)  # first-exposure ramp phase -> arm -> users
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> guardrail -> its PromQL value


class PromClient:
    """Every call has a timeout (also sent as the query's evaluation `timeout`) and a cap on the answer's size."""

    def __init__(self, url: str, timeout: float = 5.0, max_bytes: int = MAX_ANSWER_BYTES):
        self.url = url.rstrip("/")
        self.timeout, self.max_bytes = timeout, max_bytes
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, str], what: str) -> dict:
        """The JSON answer of one API call; PromQLRejected for a query Prometheus' parser refuses (HTTP 400
        bad_data), PrometheusUnavailable for anything else that is not a success."""
        try:
            with self._http.stream("GET", self.url + path, params=params) as r:
                raw = bytearray()
                for chunk in r.iter_bytes():
                    raw += chunk
                    if len(raw) > self.max_bytes:
                        raise PrometheusUnavailable(f"prometheus {what}: the answer is over {self.max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(f"prometheus at {self.url} unreachable: {exc}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        if r.status_code == 400 and body.get("errorType") == "bad_data":
            raise PromQLRejected(f"{what}: {_one_line(body.get('error'))}")
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusUnavailable(f"prometheus {what} failed: HTTP {r.status_code} "
                                        f"{_one_line(body.get('error') or raw[:300].decode('utf-8', 'replace'))}")
        return body

    def check(self, expr: str) -> None:
        """Parse `expr` with the Prometheus that will run it (/api/v1/format_query, Prometheus >= 2.38);
        raises PromQLRejected with its parser's message."""
        self._get("/api/v1/format_query", {"query": expr}, f"query {expr!r}")

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        params = {"query": expr, "timeout": f"{self.timeout:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query", params, f"query {expr!r}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PrometheusUnavailable(f"prometheus query {expr!r}: expected a vector, got {data['resultType']}")
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def value(self, expr: str, at: float | None = None) -> float | None:
        rows = self.query(expr, at)
        return rows[0][1] if rows else None

    def gauges(self, queries: Mapping[str, Mapping[str, str]], at: float | None = None,
               budget_s: float = MAX_READOUT_SECONDS) -> dict[str, dict[str, float]]:
        """arm -> key -> value of that arm's query (a Rollout's guardrail queries and PromQL metrics' statistics,
        reconcile/promql.py). A query with no series, several (which one would be the arm's?) or a NaN gives no
        value: that arm is not verified. All of them together may take `budget_s` (else PrometheusUnavailable):
        a slow Prometheus must not hold the operator's step for arms × statistics × the per-call timeout."""
        out: dict[str, dict[str, float]] = {}
        deadline = time.monotonic() + budget_s
        for arm, by_metric in queries.items():
            for metric, expr in by_metric.items():
                if time.monotonic() > deadline:
                    raise PrometheusUnavailable(f"prometheus: the readout's queries took over {budget_s:g} s")
                rows = self.query(expr, at)
                if len(rows) == 1 and math.isfinite(rows[0][1]):
                    out.setdefault(arm, {})[metric] = rows[0][1]
        return out

    def ready(self) -> bool:
        try:
            return self._http.get(self.url + "/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def read_experiment(self, experiment: str, at: float | None = None) -> ExperimentReadout:
        """Per-arm sums, exposures and cohorts of one experiment, all at one instant (default: now)."""
        at = time.time() if at is None else at
        sel = f'experiment="{_escape(experiment)}"'
        closed = self.value("max(cambrian_collector_closed_day)", at)
        raw: dict[tuple[str, str], dict[str, float]] = {}
        for labels, v in self.query(f"cambrian_arm_stat{{{sel}}}", at):
            raw.setdefault((labels["arm"], labels["metric"]), {})[labels["stat"]] = v
        stats: dict[str, dict[str, SufficientStats | RatioStats]] = {}
        for (arm, metric), sums in raw.items():
            kind = RatioStats if "sum_m" in sums else SufficientStats
            stats.setdefault(arm, {})[metric] = kind.from_dict(sums)
        exposures = {labels["arm"]: int(v) for labels, v in self.query(f"cambrian_arm_exposures{{{sel}}}", at)}
        cohorts: dict[int, dict[str, int]] = {}
        for labels, v in self.query(f"cambrian_arm_cohort_users{{{sel}}}", at):
            if "phase" in labels:  # a collector from before phases: its days say nothing of the weights
                arms = cohorts.setdefault(int(labels["phase"]), {})
                arms[labels["arm"]] = arms.get(labels["arm"], 0) + int(v)
        return ExperimentReadout(experiment, at, -1 if closed is None or math.isnan(closed) else int(closed),
                                 stats, exposures, cohorts)

    def latency_p99_ms(self, window: str = "1m", at: float | None = None) -> dict[str, float]:
        """Per-arm p99 of the model servers' request latency, in milliseconds."""
        rows = self.query(f"histogram_quantile(0.99, sum by (le, arm) (rate(cambrian_server_request_seconds_bucket[{window}])))", at)
        return {labels["arm"]: v * 1000 for labels, v in rows if "arm" in labels}

    def error_rate(self, window: str = "1m", at: float | None = None) -> dict[str, float]:
        rows = self.query(f"sum by (arm) (rate(cambrian_server_errors_total[{window}])) / "
                          f"clamp_min(sum by (arm) (rate(cambrian_server_requests_total[{window}])), 1e-9)", at)
        return {labels["arm"]: v for labels, v in rows}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:500]


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
