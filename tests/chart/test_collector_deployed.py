"""The chart's event collector as deployed (issue 17): `helm install` with collector.enabled, a warehouse URL,
SQL-defined metrics and the connection Secret from dataSources.secrets; the pod runtime harness runs the
collector pod the Deployment created (its args, its env with the Secret's keys through envFrom, its
mounted metrics ConfigMap). Against a real PostgreSQL: the collector lands its exposure log there at a
day's close and publishes the SQL metric's per-arm sums in its Prometheus export."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from cambrian.testing import dataservers
from cambrian.testing.deployed import deployed_chart

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]  # a chart install + PostgreSQL: ~80 s

TODAY = 20_000
SQL = "SELECT user_id, day, watch AS value FROM product.events"


def _escape(value: str) -> str:
    """A --set value as helm reads it: commas separate pairs unless escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def test_the_chart_collector_computes_sql_metrics_in_the_warehouse(cluster, tmp_path):
    if dataservers.postgres_bin() is None:
        pytest.skip("initdb not found: scripts/setup.sh installs postgresql")  # a failure in CI (tests/conftest.py)
    import ibis

    with dataservers.postgres_server() as pg:
        con = ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                    database=pg.database)
        con.raw_sql("CREATE SCHEMA product").close()
        rows = [(u, day, float(u % 7 + day - TODAY + 5)) for u in range(40) for day in range(TODAY - 3, TODAY + 1)]
        con.create_table("events", obj=pd.DataFrame(rows, columns=["user_id", "day", "watch"]), database="product")
        con.disconnect()
        values = {
            "collector.enabled": "true",
            "collector.persistence.enabled": "false",  # the test control plane has no volume provisioner
            "collector.warehouse.url": pg.url(),  # no password in it: the Secret brings PGPASSWORD
            "collector.warehouse.secretName": "warehouse",
            "collector.warehouse.metrics[0].name": "watch_sql",
            "collector.warehouse.metrics[0].sql": _escape(SQL),
            "dataSources.secrets[0].name": "warehouse",
            "dataSources.secrets[0].stringData.PGPASSWORD": pg.password,
        }
        with deployed_chart(cluster, tmp_path, values=values) as d:
            prefix = f"{d.release}-cambrian-collector-"
            svc = d.wait_for("the collector process", lambda: d.runtime.service(prefix), timeout=120)
            (env,) = svc["env"].values()
            assert env["PGPASSWORD"] == pg.password and env["CAMBRIAN_WAREHOUSE_URL"] == pg.url()
            url = f"http://127.0.0.1:{svc['ports'][8080]}"
            d.wait_for("the collector answering", lambda: _healthy(url), timeout=90)
            exposures = [[u, "control" if u % 2 else "t", TODAY] for u in range(40)]
            assert httpx.post(url + "/exposures", json={"experiment": "ro", "exposures": exposures}).status_code == 200
            r = httpx.post(url + "/close_day", json={"day": TODAY}, timeout=60)
            assert r.status_code == 200, r.text
            scrape = httpx.get(url + "/metrics").text
        check = ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                      database=pg.database)
        landed = check.table("cambrian_exposures").count().execute()
        check.disconnect()
    assert landed == len(exposures)
    assert 'metric="watch_sql"' in scrape and 'experiment="ro"' in scrape
    assert pg.password not in d.runtime.log(next(n for n in d.runtime.services if n.startswith(prefix)))


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
