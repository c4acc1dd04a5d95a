"""Benchmark `serving`: requests per second and p50/p99 latency of router + model server for slates of
100 candidates on 2 cores, and what the router adds on top of the server alone.

Set-up, all real processes on loopback, pinned to 2 CPUs (server, router and load generator share them):
* a model bundle trained by the real trainer (baseline Φ, default catalogue of 500 items);
* `cambrian serve` (online/server.py) with that bundle and one torch intra-op thread (OMP_NUM_THREADS=1:
  three processes share 2 cores; the same server with torch's default threads is measured beside it);
* `cambrian route` (online/router.py) with two arms (control/treatment, 50/50, user-sticky hashing),
  both pointing at that one server, so every request takes the router's full path (assignment, forward,
  splice of the arms into the answer, exposure bookkeeping);
* a load generator in another process (`python -m cambrian.bench.serving loadgen`, aiohttp, keep-alive),
  sending one user x 100 distinct candidates per request (k = 10), a bounded number of requests.
Latency: one request in flight, direct and via-router requests interleaved one by one in the same load
generator (both see the same background load; its rps is 1 / mean latency of each target).
Throughput: 8 requests in flight, one target at a time, alternating which goes first, for a few rounds.
Headline ratio = (p99 via router − p99 direct) / p99 direct at one request in flight: the share of the
tail that the router adds. The absolute router-added p99 (target < 1 ms) is reported beside it, and the
router's own in-process overhead histogram (cambrian_router_overhead_seconds) as a cross-check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cambrian.bench.throughput import load_now, make_world, pinned

CANDIDATES = 100
K = 10


# ----------------------------------------------------------------------------- statistics (pure)
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def latency_summary(lat_s: list[float], wall_s: float) -> dict[str, float]:
    return {"requests": len(lat_s), "rps": len(lat_s) / wall_s, "p50_ms": percentile(lat_s, 50) * 1e3,
            "p90_ms": percentile(lat_s, 90) * 1e3, "p99_ms": percentile(lat_s, 99) * 1e3,
            "mean_ms": float(np.mean(lat_s)) * 1e3, "max_ms": max(lat_s) * 1e3}


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style quantile from cumulative (upper bound, count) buckets, linear inside a bucket."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / max(n - prev_n, 1e-12))
        prev_le, prev_n = le, n
    return prev_le


def parse_histogram(text: str, name: str) -> list[tuple[float, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((math.inf if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return out


# ----------------------------------------------------------------------------- load generator (own process)
def request_bodies(n_users: int, n_items: int, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [json.dumps({"user_ids": [int(rng.integers(n_users))],
                        "candidates": [rng.choice(n_items, CANDIDATES, replace=False).tolist()], "k": K},
                       separators=(",", ":")).encode() for _ in range(count)]


async def _load(urls: list[str], bodies: list[bytes], requests: int, concurrency: int, warmup: int,
                max_seconds: float) -> dict:
    """Closed loop with `concurrency` requests in flight; request i goes to urls[i % len(urls)], so two URLs
    given together are measured interleaved, request by request, under the same background load."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    lat: list[list[float]] = [[] for _ in urls]
    errors = [0 for _ in urls]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * len(urls))) as session:
        async def one(i: int) -> float:
            t = time.perf_counter()
            async with session.post(urls[i % len(urls)], data=bodies[i % len(bodies)], headers=headers) as resp:
                payload = await resp.read()
                if resp.status != 200 or not payload.startswith(b"{"):
                    errors[i % len(urls)] += 1
            return time.perf_counter() - t

        for i in range(warmup * len(urls)):  # connections, caches, the server's first torch calls
            await one(i)
        total = requests * len(urls)
        next_i, deadline = 0, time.perf_counter() + max_seconds

        async def worker():
            nonlocal next_i
            while next_i < total and time.perf_counter() < deadline:
                i = next_i
                next_i += 1
                lat[i % len(urls)].append(await one(i))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies_s": lat, "wall_s": wall, "errors": errors}


def loadgen_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cambrian.bench.serving loadgen")
    ap.add_argument("--url", required=True, action="append", help="repeat to interleave URLs request by request")
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    bodies = request_bodies(a.users, a.items, 512, a.seed)
    res = asyncio.run(_load(a.url, bodies, a.requests, a.concurrency, a.warmup, a.max_seconds))
    Path(a.out).write_text(json.dumps(res))


def run_loadgen(urls: list[str], users: int, items: int, requests: int, concurrency: int, out: Path, seed: int,
                max_seconds: float) -> dict:
    subprocess.run([sys.executable, "-m", "cambrian.bench.serving", "loadgen", *[a for u in urls for a in ("--url", u)],
                    "--users", str(users),
                    "--items", str(items), "--requests", str(requests), "--concurrency", str(concurrency),
                    "--seed", str(seed), "--max-seconds", str(max_seconds), "--out", str(out)],
                   check=True, timeout=max_seconds + 120)
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- the benchmark
def _bundle(tmp: Path, users: int, days: int) -> tuple[Path, int, int]:
    from cambrian.trainer.config import ModelConfig
    from cambrian.trainer.train import train

    data, _ = make_world(tmp / "world", users, days)
    cfg = ModelConfig()
    cfg.training.epochs = 1
    cfg.training.max_train_examples = 50_000
    train(cfg, data, tmp / "train")
    meta = json.loads((data / "world.json").read_text())
    return tmp / "train" / "bundle", int(meta["n_users"]), int(meta["n_items"])


def run(quick: bool = False) -> dict:
    import httpx
    import yaml

    from cambrian.online.services import ServiceProcess

    t0 = time.perf_counter()
    load_start = load_now()
    rounds = 2 if quick else 3
    n_lat, n_tput = (150, 300) if quick else (800, 1000)
    services: list[ServiceProcess] = []
    phases: dict[str, list[dict]] = {"direct_c1": [], "router_c1": [], "direct_default_threads_c1": [],
                                     "direct_c8": [], "router_c8": []}
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-serving-") as tmp_s, pinned(2) as cpus:
        tmp = Path(tmp_s)
        bundle, n_users, n_items = _bundle(tmp, 300 if quick else 2000, 2)
        try:
            serve_args = ["serve", "--bundle", str(bundle), "--arm", "control"]
            server = ServiceProcess("server", serve_args, tmp, env={"OMP_NUM_THREADS": "1"}).start()
            services.append(server)
            server.wait_ready()
            # the same server with one intra-op thread per core (torch's default), for comparison only
            default = ServiceProcess("server-default-threads", serve_args, tmp, env={"OMP_NUM_THREADS": str(max(len(cpus), 2))}).start()
            services.append(default)
            default.wait_ready()
            cfg = {"experiment": "bench", "salt": "bench",
                   "arms": [{"name": "control", "url": server.url, "weight": 50, "control": True},
                            {"name": "treatment", "url": server.url, "weight": 50}]}
            (tmp / "router.yaml").write_text(yaml.safe_dump(cfg))
            router = ServiceProcess("router", ["route", "--config", str(tmp / "router.yaml")], tmp).start()
            services.append(router)
            router.wait_ready()
            for r in range(rounds):
                # one in flight: direct and via-router requests interleaved one by one (same background load)
                res = run_loadgen([server.url + "/rank", router.url + "/rank", default.url + "/rank"], n_users, n_items, n_lat, 1,
                                  tmp / "lg.json", seed=r, max_seconds=60 if quick else 150)
                for j, label in enumerate(("direct", "router", "direct_default_threads")):
                    lat = res["latencies_s"][j]  # sequential: this target's busy time is the sum of its latencies
                    phases[f"{label}_c1"].append({"latencies_s": lat, "wall_s": sum(lat), "errors": res["errors"][j]})
                # eight in flight: throughput, one target at a time, alternating which goes first
                order = (("direct", server), ("router", router)) if r % 2 == 0 else (("router", router),
                                                                                      ("direct", server))
                for label, svc in order:
                    res = run_loadgen([svc.url + "/rank"], n_users, n_items, n_tput, 8, tmp / "lg.json", seed=r,
                                      max_seconds=60 if quick else 150)
                    phases[f"{label}_c8"].append({"latencies_s": res["latencies_s"][0], "wall_s": res["wall_s"],
                                                  "errors": res["errors"][0]})
            router_metrics = httpx.get(router.admin_url + "/metrics", timeout=10).text
            server_metrics = httpx.get(server.admin_url + "/metrics", timeout=10).text
        finally:
            for svc in reversed(services):
                svc.stop()
    summary = {}
    for key, runs in phases.items():
        lat = [x for res in runs for x in res["latencies_s"]]
        s = latency_summary(lat, sum(res["wall_s"] for res in runs))
        s["errors"] = sum(res["errors"] for res in runs)
        summary[key] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
    added_p99 = summary["router_c1"]["p99_ms"] - summary["direct_c1"]["p99_ms"]
    added_p50 = summary["router_c1"]["p50_ms"] - summary["direct_c1"]["p50_ms"]
    overhead = parse_histogram(router_metrics, "cambrian_router_overhead_seconds")
    server_hist = parse_histogram(server_metrics, "cambrian_server_request_seconds")
    in_router = {f"p{q}_ms": (None if (v := histogram_quantile(overhead, q / 100)) is None else round(v * 1e3, 4))
                 for q in (50, 99)}
    in_server = {f"p{q}_ms": (None if (v := histogram_quantile(server_hist, q / 100)) is None else round(v * 1e3, 4))
                 for q in (50, 99)}
    ratio = added_p99 / summary["direct_c1"]["p99_ms"]
    return {
        "name": "serving",
        "command": "cambrian bench run serving" + (" --quick" if quick else ""),
        "quick": quick,
        "ratio": round(ratio, 4),
        "ratio_meaning": ("(client p99 via router -> server  -  client p99 server direct) / client p99 server "
                          "direct, one request in flight, 1 user x 100 candidates per request: the share of "
                          "the tail latency the router adds (lower is better)"),
        "router_added_p99_ms": round(added_p99, 4),
        "router_added_p50_ms": round(added_p50, 4),
        "router_rps_8_in_flight": summary["router_c8"]["rps"],
        "direct_rps_8_in_flight": summary["direct_c8"]["rps"],
        "phases": summary,
        "router_in_process_overhead_histogram": in_router,
        "server_in_process_latency_histogram": in_server,
        "candidates_per_request": CANDIDATES, "k": K, "users_per_request": 1,
        "rounds": rounds, "bundle_users": n_users, "bundle_items": n_items,
        "cores": {"pinned_cpus": cpus, "processes": "server, router, load generator"},
        "load_average_start": load_start,
        "load_average_end": load_now(),
        "targets_met": {"router_added_p99<1ms": added_p99 < 1.0},
        "seconds": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2:])
    else:
        print(json.dumps(run(quick=True), indent=2))
