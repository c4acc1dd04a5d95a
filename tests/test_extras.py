"""The extras of pyproject.toml split the dependencies by image: each image's commands, run through the
real CLI in a child that cannot import anything its extra does not bring (cambrian.testing.blocked), do
their work; and a command whose extra is missing says which one to install, before it starts anything.
(The operator's side is tests/operator/test_operator_imports.py.)"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cambrian.cli import COMMANDS
from cambrian.testing.blocked import argv, blocked_imports, outside_extra, run_cli

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """`cambrian world generate` and `cambrian train` as the trainer image runs them: no kopf, no aiohttp."""
    root = tmp_path_factory.mktemp("trainer-image")
    blocked = outside_extra("trainer")
    assert {"kopf", "kubernetes", "aiohttp", "matplotlib"} <= blocked
    world = run_cli(["world", "generate", "--users", "120", "--days", "2", "--seed", "1", "--out", str(root / "data")],
                    blocked)
    assert blocked_imports(world.stderr) == [] and world.returncode == 0, world.stderr[-2000:]
    train = run_cli(["train", "--data", str(root / "data"), "--out", str(root / "out"), "--json"], blocked)
    assert blocked_imports(train.stderr) == [] and train.returncode == 0, train.stderr[-2000:]
    assert json.loads(train.stdout)["ok"] is True
    return root / "out" / "bundle"


def _started(cmd: list[str], port_file: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{cmd[3:]} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}"


def test_serving_image_serves_and_routes_without_kopf(trained, tmp_path):
    """`cambrian serve` and `cambrian route` with nothing outside the `serving` extra: no kopf, no
    Kubernetes client, no agents; a request through the router is ranked by the trained bundle."""
    blocked = outside_extra("serving")
    assert {"kopf", "kubernetes", "optuna", "openai", "google"} <= blocked and "torch" not in blocked
    procs = []
    try:
        server, server_url = _started(
            argv(["serve", "--bundle", str(trained), "--arm", "control", "--port", "0",
                  "--port-file", str(tmp_path / "serve.port"), "--admin-port", "0"], blocked), tmp_path / "serve.port", tmp_path / "serve.log")
        procs.append(server)
        (tmp_path / "router.yaml").write_text(json.dumps({"experiment": "x", "arms": [
            {"name": "control", "url": server_url, "weight": 50, "control": True},
            {"name": "t", "url": server_url, "weight": 50}]}))
        router, router_url = _started(
            argv(["route", "--config", str(tmp_path / "router.yaml"), "--port", "0",
                  "--port-file", str(tmp_path / "route.port"), "--admin-port", "0"], blocked), tmp_path / "route.port", tmp_path / "route.log")
        procs.append(router)
        r = httpx.post(router_url + "/rank", json={"user_ids": [1, 2, 3], "candidates": [[1, 2, 3, 4]] * 3, "k": 2},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert [len(s) for s in r.json()["slates"]] == [2, 2, 2]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
    for name in ("serve", "route"):
        log = (tmp_path / f"{name}.log").read_text()
        assert blocked_imports(log) == [], f"`cambrian {name}` tried to import {blocked_imports(log)}"


MISSING = [  # command line, the extra it needs, a distribution of that extra to take away
    (["train", "--data", "{tmp}/data", "--out", "{tmp}/out"], "trainer", "torch"),
    (["world", "generate", "--out", "{tmp}/out"], "trainer", "pyarrow"),
    (["serve", "--bundle", "{tmp}/bundle", "--arm", "a"], "serving", "torch"),
    (["route", "--config", "{tmp}/router.yaml"], "serving", "aiohttp"),
    (["operator", "run"], "operator", "kopf"),
    (["demo", "--out", "{tmp}/out"], "local", "matplotlib"),
    (["dashboards", "--out", "{tmp}/out"], "local", "grafana-foundation-sdk"),
]


@pytest.mark.parametrize("args,extra,dist", MISSING, ids=[" ".join(m[0][:2]) for m in MISSING])
def test_a_missing_extra_is_named_before_the_command_starts(tmp_path, args, extra, dist):
    module = {"grafana-foundation-sdk": "grafana_foundation_sdk"}.get(dist, dist)
    args = [a.format(tmp=tmp_path) for a in args]
    assert COMMANDS[args[0]][2] == extra
    r = run_cli(args, [module], [dist], timeout=120)
    assert r.returncode == 1 and r.stdout == "", r.stderr[-2000:]
    assert r.stderr.splitlines() == [f"error: cambrian {args[0]} needs the '{extra}' extra ({dist} not installed); "
                                     f"install it with: pip install 'cambrian[{extra}]'"]
    assert not (tmp_path / "out").exists()
    # --json: the one JSON error object on stdout, nothing on stderr
    r = run_cli([*args, "--json"], [module], [dist], timeout=120)
    assert r.returncode == 1 and r.stderr == "", r.stderr[-2000:]
    body = json.loads(r.stdout)
    assert body["ok"] is False and body["exit_code"] == 1 and f"cambrian[{extra}]" in body["error"]


def test_help_needs_no_extra_and_a_module_missing_mid_command_names_the_extra(tmp_path):
    r = run_cli(["train", "--help"], ["torch"], ["torch"], timeout=120)
    assert r.returncode == 0 and "Usage" in r.stdout
    # The metadata says installed but the import fails (a broken install): named when the import happens.
    data = tmp_path / "data"
    data.mkdir()
    # (the server itself no longer imports torch: the bundle's program runs in a contained host process)
    r = run_cli(["serve", "--bundle", str(data), "--arm", "a"], ["numpy"], timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.splitlines()[-1] == ("error: cambrian serve needs the 'serving' extra (numpy not installed); "
                                         "install it with: pip install 'cambrian[serving]'")


def test_every_command_names_an_extra_of_pyproject():
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for name, (_, _, extra) in COMMANDS.items():
        assert extra is None or extra in extras, f"{name}: unknown extra {extra!r}"
