"""Grafana dashboards: one sidecar-labelled ConfigMap per charts/cambrian/dashboards/*.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cambrian"


def dashboard_maps(render, docs: list[dict]) -> list[dict]:
    return [d for d in render.by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]


def test_one_configmap_per_json_file(render, tmp_path):
    chart = tmp_path / "cambrian"
    shutil.copytree(CHART, chart)
    folder = chart / "dashboards"
    for old in folder.glob("*.json"):
        old.unlink()
    files = {
        # Grafana legend templates use {{ }}: the chart must copy them verbatim, not template them.
        "cambrian_offline.json": {"title": "Offline loop", "panels": [{"legendFormat": "{{phase}}"}]},
        "Online-Experiments.json": {"title": "Online experiments", "panels": []},
        "budgets.json": {"title": "Budgets", "uid": "cambrian-budgets"},
    }
    for name, body in files.items():
        (folder / name).write_text(json.dumps(body, indent=2) + "\n")
    (folder / "notes.txt").write_text("not a dashboard")

    maps = dashboard_maps(render, render.docs(chart=chart))
    assert len(maps) == len(files)
    seen = {}
    for cm in maps:
        ((key, text),) = cm["data"].items()  # exactly one entry each
        seen[key] = text
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Cambrian"}
        assert len(cm["metadata"]["name"]) <= 63 and cm["metadata"]["name"] == cm["metadata"]["name"].lower()
    assert seen.keys() == files.keys()
    for name, text in seen.items():
        assert text == (folder / name).read_text().rstrip("\n")
        assert json.loads(text) == files[name]
    names = sorted(cm["metadata"]["name"] for cm in maps)
    assert names == ["cambrian-dashboard-budgets", "cambrian-dashboard-cambrian-offline",
                     "cambrian-dashboard-online-experiments"]

    relabelled = render.docs("--set", "dashboards.label=grafana_dash", "--set", "dashboards.labelValue=yes",
                             "--set", "dashboards.folder=", chart=chart)
    maps = [d for d in render.by_kind(relabelled, "ConfigMap") if d["metadata"]["labels"].get("grafana_dash") == "yes"]
    assert len(maps) == len(files) and all("annotations" not in m["metadata"] for m in maps)
    assert not dashboard_maps(render, render.docs("--set", "dashboards.enabled=false", chart=chart))


def test_shipped_dashboards_render(render):
    """Whatever dashboards the repository ships are all packaged, each as valid JSON."""
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    maps = dashboard_maps(render, render.docs())
    assert sorted(k for m in maps for k in m["data"]) == files
    for m in maps:
        for text in m["data"].values():
            json.loads(text)
