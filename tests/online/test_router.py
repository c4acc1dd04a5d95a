"""Router round trips, hot reload under load, stickiness across restarts, exposure logging."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import yaml

from cambrian.online.assignment import Assignment
from cambrian.online.collector import Collector, Store
from cambrian.online.router import Router, RouterConfig
from cambrian.online.runner import BackgroundApp


def _config(servers, weights, collector=None):
    arms = [{"name": "control", "url": servers["control"].url, "weight": weights["control"], "control": True}]
    for name in ("treatment", "t2"):
        arms.append({"name": name, "url": servers[name].url, "weight": weights.get(name, 0)})
    d = {"experiment": "exp1", "salt": "s1", "arms": arms}
    if collector:
        d["collector"] = collector
    return d


def _batch(users):
    return {"user_ids": users, "candidates": [list(range(u % 50, u % 50 + 100)) for u in users], "k": 5, "day": 3}


def test_split_forward_merge(arm_servers, mod_scorer, tmp_path):
    store = Store(tmp_path / "c.sqlite")
    with BackgroundApp(Collector(store).app()) as coll:
        cfg = RouterConfig.from_dict(_config(arm_servers, {"control": 40, "treatment": 30, "t2": 30}, coll.url))
        router = Router(cfg, flush_interval=0.05)
        with BackgroundApp.of(router) as app:
            users = list(range(300))
            r = httpx.post(app.url + "/rank", json=_batch(users))
            assert r.status_code == 200, r.text
            body = r.json()
            assign = cfg.assignment()
            assert body["arms"] == [assign.arm_of(u) for u in users]
            assert set(body["arms"]) == {"control", "treatment", "t2"}
            scorers = {"control": mod_scorer(1), "treatment": mod_scorer(3), "t2": mod_scorer(5)}
            for u, arm, slate in zip(users, body["arms"], body["slates"]):
                c = np.asarray(_batch([u])["candidates"][0])
                s = scorers[arm].score(np.asarray([u]), c[None])[0]
                assert slate == c[np.argsort(-s, kind="stable")[:5]].tolist()
            metrics = httpx.get(app.admin_url + "/metrics").text
            assert 'cambrian_router_users_total{arm="t2"}' in metrics
            assert "cambrian_router_overhead_seconds_count 1.0" in metrics
            assert 'cambrian_router_weight{arm="treatment",experiment="exp1"} 30.0' in metrics
            # upstream failure is a clear 502 naming the arm; bad input a 400 naming the field
            bad = httpx.post(app.url + "/rank", json={"user_ids": [1, 2], "candidates": [[1]]})
            assert bad.status_code == 400 and "candidates" in bad.json()["error"]
            time.sleep(0.3)
            # the same users again: no new exposures
            httpx.post(app.url + "/rank", json=_batch(users))
            time.sleep(0.3)
    counts = store.exposure_counts()
    assert sum(counts.values()) == 300
    assert counts[("exp1", "treatment")] == body["arms"].count("treatment")
    _, ex = store.frames()
    assert set(ex["day"]) == {3} and set(ex["phase"]) == {0}


def test_new_weights_start_a_phase_and_every_user_is_logged_again_in_it(arm_servers, tmp_path):
    """A ramp step moves users between arms, so the router stamps exposures with the phase (the config's, as the
    operator writes the Rollout's step; a weight change moves past it), and a user seen before is logged again
    in the new phase: the analysis reads the current phase alone (online/aggregate.py)."""
    store = Store(tmp_path / "c.sqlite")
    with BackgroundApp(Collector(store).app()) as coll:
        cfg = RouterConfig.from_dict({**_config(arm_servers, {"control": 90, "treatment": 10}, coll.url), "phase": 4})
        router = Router(cfg, flush_interval=0.05)
        with BackgroundApp.of(router) as app:
            users = list(range(200))
            httpx.post(app.url + "/rank", json=_batch(users)).raise_for_status()
            same = httpx.post(app.admin_url + "/weights", json={"weights": {"control": 90, "treatment": 10}}).json()
            assert same["phase"] == 4  # the same weights: the same phase
            moved = httpx.post(app.admin_url + "/weights", json={"weights": {"control": 50, "treatment": 50}}).json()
            assert moved["phase"] == 5  # no phase given: the next one
            second = httpx.post(app.url + "/rank", json=_batch(users)).json()["arms"]
            # a phase named below the current one (a manual change raced the operator) is moved past it
            back = httpx.post(app.admin_url + "/weights", json={"weights": {"control": 60, "treatment": 40}, "phase": 2})
            assert back.json()["phase"] == 6
            httpx.post(app.admin_url + "/flush").raise_for_status()
    _, ex = store.frames()
    assert sorted(set(ex["phase"])) == [4, 5]
    in5 = ex[ex["phase"] == 5].sort_values("user_id")
    assert in5["user_id"].tolist() == users and in5["arm"].tolist() == second
    assert RouterConfig.from_dict(router.state.cfg.to_dict()).phase == 6  # what a restart reads back


def test_an_arm_redirected_to_controls_server_keeps_its_users_and_phase(arm_servers, mod_scorer, tmp_path):
    """A stopped A/B/n arm (operator/reconcile/rollout.py): POST /weights with `urls` serves its users control's
    model while they keep their arm, their weight and the phase, so nobody is logged anew or re-randomised."""
    store = Store(tmp_path / "c.sqlite")
    path = tmp_path / "router.yaml"
    w = {"control": 40, "treatment": 30, "t2": 30}
    path.write_text(yaml.safe_dump({**_config(arm_servers, w, None), "phase": 3}))
    with BackgroundApp(Collector(store).app()) as coll:
        cfg = RouterConfig.from_dict({**_config(arm_servers, w, coll.url), "phase": 3})
        router = Router(cfg, config_path=str(path), flush_interval=0.05)
        with BackgroundApp.of(router) as app:
            users = list(range(300))
            first = httpx.post(app.url + "/rank", json=_batch(users)).json()
            control = arm_servers["control"].url
            r = httpx.post(app.admin_url + "/weights", json={"weights": w, "phase": 3, "urls": {"t2": control}})
            assert r.status_code == 200, r.text
            assert r.json()["phase"] == 3 and r.json()["urls"]["t2"] == control.rstrip("/")
            assert httpx.get(app.admin_url + "/weights").json()["urls"]["treatment"] == arm_servers["treatment"].url
            second = httpx.post(app.url + "/rank", json=_batch(users)).json()
            assert second["arms"] == first["arms"]
            for u, arm, slate in zip(users, second["arms"], second["slates"]):
                c = np.asarray(_batch([u])["candidates"][0])
                s = mod_scorer(3 if arm == "treatment" else 1).score(np.asarray([u]), c[None])[0]  # t2: control's
                assert slate == c[np.argsort(-s, kind="stable")[:5]].tolist(), arm
            for bad, field in (({"t2": "ftp://x"}, "urls['t2']"), ({"ghost": control}, "unknown arm")):
                r = httpx.post(app.admin_url + "/weights", json={"weights": w, "urls": bad})
                assert r.status_code == 400 and field in r.json()["error"], r.text
            httpx.post(app.admin_url + "/flush").raise_for_status()
    _, ex = store.frames()
    assert len(ex) == 300 and set(ex["phase"]) == {3}   # every user logged once, in their own arm
    assert RouterConfig.load(path).urls["t2"] == control.rstrip("/")   # what a restart reads back


def test_hot_reload_under_load_and_restart(arm_servers, tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(_config(arm_servers, {"control": 90, "treatment": 10})))
    router = Router(RouterConfig.load(path), config_path=str(path), watch_interval=0.05)
    users = list(range(1000))
    weights_seen = [{"control": 90, "treatment": 10, "t2": 0}]
    results, failures = [], []
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=10) as c:
            i = 0
            while not stop.is_set():
                chunk = users[(i * 100) % 1000:(i * 100) % 1000 + 100]
                r = c.post(app.url + "/rank", json=_batch(chunk))
                (results if r.status_code == 200 else failures).append((chunk, r))
                i += 1

    with BackgroundApp.of(router) as app:
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        for w in ({"control": 70, "treatment": 20, "t2": 10}, {"control": 50, "treatment": 25, "t2": 25}):
            assert httpx.post(app.admin_url + "/weights", json={"weights": w}).status_code == 200
            weights_seen.append(w)
            time.sleep(0.3)
        # edit the file by hand: the watcher picks it up
        d = yaml.safe_load(path.read_text())
        for arm in d["arms"]:
            arm["weight"] = {"control": 30, "treatment": 35, "t2": 35}[arm["name"]]
        path.write_text(yaml.safe_dump(d))
        weights_seen.append({"control": 30, "treatment": 35, "t2": 35})
        time.sleep(0.5)
        # invalid weights are rejected and change nothing
        r = httpx.post(app.admin_url + "/weights", json={"weights": {"control": 10, "treatment": 95}})
        assert r.status_code == 400 and "weights" in r.json()["error"]
        stop.set()
        for t in threads:
            t.join()
        assert httpx.get(app.admin_url + "/weights").json()["weights"] == weights_seen[-1]
        before = httpx.post(app.url + "/rank", json=_batch(users)).json()["arms"]
    assert not failures, failures[:1]
    assert len(results) > 10
    # every response is consistent with one of the weight sets in force (no torn state)
    assignments = [Assignment.create("s1", "control", ["treatment", "t2"], w) for w in weights_seen]
    expected = [[a.arm_of(u) for u in users] for a in assignments]
    for chunk, r in results:
        arms = r.json()["arms"]
        assert any(arms == [e[u] for u in chunk] for e in expected)
    # a new router process reading the same file routes every user exactly as before
    router2 = Router(RouterConfig.load(path), config_path=str(path))
    with BackgroundApp(router2.app()) as app:
        after = httpx.post(app.url + "/rank", json=_batch(users)).json()["arms"]
    assert after == before == expected[-1]


def test_upstream_down_is_502(arm_servers):
    cfg = _config(arm_servers, {"control": 50, "treatment": 50})
    cfg["arms"][1]["url"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    with BackgroundApp(Router(RouterConfig.from_dict(cfg)).app()) as app:
        r = httpx.post(app.url + "/rank", json=_batch(list(range(50))))
        assert r.status_code == 502 and "arm treatment" in r.json()["error"]


def test_router_process_restart_keeps_weights_and_arms(arm_servers, tmp_path):
    """`cambrian route` as a real process: POST /weights persists; a new process routes identically."""
    from cambrian.online.services import ServiceProcess

    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(_config(arm_servers, {"control": 80, "treatment": 10, "t2": 10})))
    users = list(range(400))
    proc = ServiceProcess("router", ["route", "--config", str(path)], tmp_path).start().wait_ready()
    try:
        w = {"control": 40, "treatment": 30, "t2": 30}
        assert httpx.post(proc.admin_url + "/weights", json={"weights": w}).json()["weights"] == w
        before = httpx.post(proc.url + "/rank", json=_batch(users)).json()["arms"]
    finally:
        proc.stop()
    proc = ServiceProcess("router", ["route", "--config", str(path)], tmp_path).start().wait_ready()
    try:
        assert httpx.get(proc.admin_url + "/weights").json()["weights"] == w
        assert httpx.post(proc.url + "/rank", json=_batch(users)).json()["arms"] == before
    finally:
        proc.stop()
    expected = Assignment.create("s1", "control", ["treatment", "t2"], w)
    assert before == [expected.arm_of(u) for u in users]


def test_the_serving_port_serves_users_only(arm_servers, tmp_path):
    """What a Service and a Gateway route reach (`cambrian route --port`) ranks and answers /healthz, nothing else:
    the split (GET/POST /weights), /flush and /metrics are on the admin port; with --read-only-config (the
    operator's ConfigMap) no one can POST /weights at all."""
    from cambrian.online.services import ServiceProcess

    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(_config(arm_servers, {"control": 80, "treatment": 20})))
    split = {"control": 80, "treatment": 20, "t2": 0}
    proc = ServiceProcess("router", ["route", "--config", str(path)], tmp_path).start().wait_ready()
    try:
        assert proc.admin_port not in (None, proc.port)
        assert httpx.post(proc.admin_url + "/flush").json() == {"pending": 0}
        for method, where in (("GET", "/weights"), ("POST", "/weights"), ("POST", "/flush"), ("GET", "/metrics")):
            r = httpx.request(method, proc.url + where, json={"weights": {"control": 0, "treatment": 100}})
            assert r.status_code == 404, (method, where, r.text)
        assert httpx.post(proc.url + "/rank", json=_batch(list(range(50)))).status_code == 200
        assert httpx.get(proc.admin_url + "/weights").json()["weights"] == split  # unchanged by the POST above
        assert "cambrian_router_users_total" in httpx.get(proc.admin_url + "/metrics").text
    finally:
        proc.stop()
    proc = ServiceProcess("router-ro", ["route", "--config", str(path), "--read-only-config"], tmp_path)
    proc.start().wait_ready()
    try:
        r = httpx.post(proc.admin_url + "/weights", json={"weights": {"control": 0, "treatment": 100}})
        assert r.status_code == 405 and httpx.get(proc.admin_url + "/weights").json()["weights"] == split
    finally:
        proc.stop()
    assert yaml.safe_load(path.read_text())["arms"][0]["weight"] == 80


def test_bad_config_is_a_clear_error(tmp_path):
    import pytest

    from cambrian.online.router import RouterConfig

    with pytest.raises(ValueError, match="phase: must be an integer >= 0"):
        RouterConfig.from_dict({"experiment": "e", "phase": -1, "arms": [
            {"name": "c", "url": "http://127.0.0.1:1", "control": True}, {"name": "t", "url": "http://127.0.0.1:2"}]})

    with pytest.raises(ValueError, match=r"arms\[1\].url: required"):
        RouterConfig.from_dict({"experiment": "e", "arms": [{"name": "c", "url": "http://x", "control": True,
                                                             "weight": 100}, {"name": "t"}]})
    with pytest.raises(ValueError, match="control: true"):
        RouterConfig.from_dict({"experiment": "e", "arms": [{"name": "c", "url": "http://u"},
                                                             {"name": "t", "url": "http://v"}]})
    with pytest.raises(ValueError, match=r"arms\[1\].url: .*only http"):
        RouterConfig.from_dict({"experiment": "e", "arms": [{"name": "c", "url": "http://u", "control": True},
                                                             {"name": "t", "url": "ftp://v"}]})
