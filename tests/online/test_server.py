"""Model server round trips over real HTTP."""

from __future__ import annotations

import httpx
import numpy as np

from cambrian.online.runner import BackgroundApp
from cambrian.online.server import ModelServer


def test_rank_batch_and_metrics(mod_scorer):
    server = ModelServer(mod_scorer(3), model="m3", arm="treatment")
    with BackgroundApp.of(server) as app:
        users = [5, 9, 11]
        cands = [[int(x) for x in np.arange(100) + 7 * u] for u in users]
        r = httpx.post(app.url + "/rank", json={"user_ids": users, "candidates": cands, "k": 10})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["arm"] == "treatment" and body["model"] == "m3"
        for u, c, slate, sc in zip(users, cands, body["slates"], body["scores"]):
            expect = -((np.asarray(c) * 3 + u) % 97)
            order = np.argsort(-expect, kind="stable")[:10]
            assert slate == [c[i] for i in order]
            assert sc == sorted(sc, reverse=True)
        # errors name the field
        bad = httpx.post(app.url + "/rank", json={"user_ids": [1, 2], "candidates": [[1, 2]]})
        assert bad.status_code == 400 and "candidates" in bad.json()["error"]
        bad = httpx.post(app.url + "/rank", json={"candidates": [[1, 2]]})
        assert bad.status_code == 400 and "user_ids" in bad.json()["error"]
        assert httpx.get(app.url + "/healthz").status_code == 200
        assert httpx.get(app.url + "/metrics").status_code == 404  # not on the port a Service and a route reach
        metrics = httpx.get(app.admin_url + "/metrics").text
        assert 'cambrian_server_requests_total{arm="treatment",model="m3"} 3.0' in metrics
        assert 'cambrian_server_users_total{arm="treatment",model="m3"} 3.0' in metrics
        assert 'cambrian_server_errors_total{arm="treatment",code="400",model="m3"} 2.0' in metrics
        assert 'cambrian_server_request_seconds_count{arm="treatment",model="m3"} 1.0' in metrics
