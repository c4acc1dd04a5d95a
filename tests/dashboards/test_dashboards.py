"""The generated Grafana dashboards: structure, committed copies, PromQL syntax (promtool) and, with a
live Prometheus scraping the real exporters of the online loop, that every panel query returns data."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cambrian import dashboards

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = [ROOT / "charts" / "cambrian" / "dashboards", ROOT / "manifests" / "dashboards"]
EXPECTED_UIDS = {"cambrian-overview", "cambrian-hypotheses", "cambrian-experiments", "cambrian-guardrails",
                 "cambrian-spend"}
METRIC_RE = re.compile(r"\b(cambrian_[a-z0-9_]+)\b")
VAR_RE = re.compile(r"\$(?:\{)?([A-Za-z_][A-Za-z0-9_]*)")
BUILTIN_VARS = {"__rate_interval", "__interval", "__range"}


@pytest.fixture(scope="module")
def generated() -> dict[str, dict]:
    return dashboards.generate()


def panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def queries(generated: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every target of every panel."""
    return [(d["uid"], p["title"], t["expr"]) for d in generated.values() for p in panels(d) for t in p["targets"]]


def test_five_dashboards_with_unique_uids(generated):
    uids = [d["uid"] for d in generated.values()]
    assert sorted(uids) == sorted(EXPECTED_UIDS)
    assert all(len(u) <= 40 for u in uids)  # Grafana's uid limit
    assert len({d["title"] for d in generated.values()}) == len(generated)
    assert set(generated) == {f"{u}.json" for u in uids}


def test_datasource_variable_and_every_panel_uses_it(generated):
    for d in generated.values():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus", d["uid"]
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"]["uid"] == "${datasource}", (d["uid"], v["name"])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)) and 0 not in ids, f"{d['uid']}: panel ids must be unique and set"
        for p in panels(d):
            where = f"{d['uid']} / {p['title']}"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert p["targets"], f"{where}: no targets"
            assert p.get("description"), f"{where}: no description"
            refs = [t["refId"] for t in p["targets"]]
            assert all(refs) and len(refs) == len(set(refs)), where
            for t in p["targets"]:
                assert t["expr"].strip(), f"{where}: empty expr"
                assert t["datasource"]["uid"] == "${datasource}", where
                used = set(VAR_RE.findall(t["expr"])) - BUILTIN_VARS
                assert used <= set(variables), f"{where}: undefined variable(s) {used - set(variables)}"


def test_panels_fit_the_24_column_grid(generated):
    for d in generated.values():
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (d["uid"], p["title"], g)


def test_queries_use_only_known_metric_names(generated):
    """Each metric a query reads is listed in dashboards.METRICS with the component that exports it."""
    for uid, title, expr in queries(generated):
        names = set(METRIC_RE.findall(expr))
        assert names, f"{uid} / {title}: reads no Cambrian metric"
        assert names <= set(dashboards.METRICS), f"{uid} / {title}: unknown metric(s) {names - set(dashboards.METRICS)}"


def test_metric_sources_are_real(generated):
    """Every name listed as exported by the online loop appears in that module's source; every operator
    metric is one the chart's PrometheusRule documents (the operator's exporter is not written yet)."""
    rules = (ROOT / "charts" / "cambrian" / "templates" / "_helpers.tpl").read_text()
    for name, source in dashboards.METRICS.items():
        if source == "operator":
            assert re.search(rf"\b{name}\{{", rules), f"{name} is not documented in the chart's rules"
        if source.startswith("online."):
            text = (ROOT / "online" / f"{source.split('.')[1]}.py").read_text()
            base = re.sub(r"_(total|bucket)$", "", name)
            assert f'"{base}"' in text, f"{name} not found in online/{source.split('.')[1]}.py"


def test_committed_files_equal_a_fresh_generation(generated):
    for folder in COMMITTED:
        on_disk = {p.name for p in folder.glob("*.json")}
        assert on_disk == set(generated), f"{folder}: run `cambrian dashboards --out {folder.relative_to(ROOT)}`"
        for name, dash in generated.items():
            assert (folder / name).read_text() == dashboards.render(dash), (
                f"{folder / name} is stale: run `cambrian dashboards --out charts/cambrian/dashboards "
                f"--out manifests/dashboards`")


def test_cli_writes_and_checks(tmp_path):
    from typer.testing import CliRunner

    from cambrian.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["dashboards", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "a").glob("*.json")) == sorted(f"{u}.json" for u in EXPECTED_UIDS)
    assert runner.invoke(app, ["dashboards", "--out", str(tmp_path / "a"), "--check"]).exit_code == 0
    (tmp_path / "a" / "cambrian-spend.json").write_text("{}")
    r = runner.invoke(app, ["dashboards", "--out", str(tmp_path / "a"), "--check"])
    assert r.exit_code == 1 and "cambrian-spend.json" in r.output


# ---------------------------------------------------------------------------------------------- PromQL
def concrete(expr: str, values: dict[str, str]) -> str:
    """Grafana variables replaced by concrete values, as Grafana would before sending the query."""
    out = expr.replace("$__rate_interval", values.get("__rate_interval", "1m"))
    for name, value in values.items():
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in out, f"unreplaced variable in {out}"
    return out


DEMO_VALUES = {"experiment": "exp-demo", "metric": "watch_minutes", "control": "control", "evolution": ".*"}


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool not installed: apt-get install -y --no-install-recommends prometheus")
    return path


@pytest.mark.prometheus
def test_every_query_parses_with_promtool(generated, tmp_path):
    rules = [{"record": f"cambrian:dashboard_query:{i}", "expr": concrete(expr, DEMO_VALUES)}
             for i, (_, _, expr) in enumerate(queries(generated))]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


@pytest.mark.prometheus
def test_promtool_would_catch_a_broken_query(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": concrete(dashboards.lift(), DEMO_VALUES).replace("group_left ()", "group_left")}]}]}))
    r = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
