"""The launched champion serves in local mode: a `cambrian serve` process on the champion's bundle, started
by the driver through the operator's core, switched to a new champion's bundle without a moment without a
model server, and a bundle that cannot be served is reported instead of stopping the loop.

The bundle is real (a tiny model trained once by `cambrian train`); the stand-in trainer copies it, so the
loop itself runs in seconds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from cambrian.operator.local_driver import LocalDriver
from cambrian.operator.localstore import LocalStore, load_manifests
from cambrian.operator.platform.local import SIM_EPOCH, LocalPlatform, stop_leftovers
from cambrian.operator.reconcile.actions import Owner, UpdateChampion
from cambrian.testing.waiting import poll

pytestmark = pytest.mark.slow  # a real model trained once, real model servers

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "tiny-evolution.yaml"
FAKE_TRAINER = [sys.executable, str(HERE / "fake_trainer.py")]


def rank(url: str) -> dict:
    r = httpx.post(url + "/rank", json={"user_ids": [0, 1], "candidates": [[0, 1, 2], [2, 3, 4]]}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_the_champion_is_served_while_the_local_loop_runs(tmp_path, real_bundle):
    """Before: local mode wrote champions/<evolution>.json and served nothing."""
    root, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    answers: list[dict] = []

    def probe(driver: LocalDriver) -> None:  # production traffic, while the loop runs
        f = root / "champions" / "tiny.json"
        if f.is_file() and not answers:
            answers.append({"champion": json.loads(f.read_text()), "rank": rank(json.loads(f.read_text())["url"])})

    driver = LocalDriver(root, data_dir=data, train_command=[*FAKE_TRAINER, "--copy-bundle", str(real_bundle)],
                         poll_s=0.1, on_pass=probe)
    driver.apply(load_manifests(SCENARIO))
    try:
        assert driver.run().reason.startswith("every Evolution is done")
    finally:
        stop_leftovers(root.resolve())
    (evo,) = LocalStore(root).list("evolutions")
    st = evo["status"]
    (seen,) = answers
    assert seen["champion"]["bundle"] == st["champion"]["bundle"] and seen["champion"]["name"] == "baseline"
    assert seen["rank"]["arm"] == "champion" and len(seen["rank"]["slates"]) == 2
    cond = {c["type"]: c for c in st["conditions"]}
    assert cond["ChampionServing"]["status"] == "True", cond
    events = [json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] in ("BundleNotServable", "Blocked")]


def test_switching_the_local_champion_starts_the_new_server_before_the_old_one_stops(tmp_path, real_bundle):
    root = tmp_path / "run"
    owner = Owner("Evolution", "feed", "uid-1", "default")
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(real_bundle, a)
    shutil.copytree(real_bundle, b)
    p = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH)

    def started(revision: str):  # the driver's passes: look until the server answers (or is reported blocked)
        poll(f"the champion server of {revision}", lambda: (p.champion_serving(owner, {}).ready
                                                          or p.champion_serving(owner, {}).blocked), 90)
        return p.champion_serving(owner, {})

    try:
        assert p.champion_serving(owner, {}) is None
        p.update_champion(UpdateChampion(owner, "feed-champion", "baseline", f"file://{a}", None, None, "r1", {}))
        # it returns at once: the server starts while the driver goes on, and its clock waits (busy)
        seen = p.champion_serving(owner, {})
        assert (seen.revision, seen.ready) == ("r1", False) and p.busy()
        assert not (root / "champions" / "feed.json").exists()  # nothing to publish before it answers
        first = p.champions["feed"].proc
        assert started("r1").ready and not p.busy()
        p.update_champion(UpdateChampion(owner, "feed-champion", "baseline", f"file://{a}", None, None, "r1", {}))
        assert p.champions["feed"].proc is first  # idempotent: the same revision starts nothing
        old_url = json.loads((root / "champions" / "feed.json").read_text())["url"]

        p.update_champion(UpdateChampion(owner, "feed-champion", "h1", f"file://{b}", "h1", "ro-1", "r2", {}))
        # while the new one starts, production is the old one: still published, still answering
        assert json.loads((root / "champions" / "feed.json").read_text())["revision"] == "r1"
        assert rank(old_url)["arm"] == "champion" and first.proc.poll() is None
        assert started("r2").ready
        published = json.loads((root / "champions" / "feed.json").read_text())
        assert published["bundle"] == f"file://{b}" and published["name"] == "h1" and published["revision"] == "r2"
        assert rank(published["url"])["arm"] == "champion"
        assert first.proc.poll() is not None  # the old server went, after the new one answered
        seen = p.champion_serving(owner, {})
        assert (seen.revision, seen.bundle, seen.ready) == ("r2", f"file://{b}", True)

        # a bundle no server can load: reported (blocked), the server in production keeps serving
        p.update_champion(UpdateChampion(owner, "feed-champion", "h2", f"file://{tmp_path}/nowhere", "h2", "ro-2",
                                         "r3", {}))
        seen = p.champion_serving(owner, {})
        assert seen.revision == "r3" and not seen.ready and "holds no bundle.json" in seen.blocked
        assert json.loads((root / "champions" / "feed.json").read_text())["revision"] == "r2"
        assert rank(published["url"])["arm"] == "champion"

        # a server that starts and dies (a bundle whose model cannot load): reported, production untouched
        broken = tmp_path / "broken"
        shutil.copytree(real_bundle, broken)
        for f in broken.iterdir():
            if f.name != "bundle.json":
                f.unlink() if f.is_file() else shutil.rmtree(f)
        p.update_champion(UpdateChampion(owner, "feed-champion", "h3", f"file://{broken}", "h3", "ro-3", "r4", {}))
        seen = started("r4")
        assert not seen.ready and "did not start" in seen.blocked and not p.busy()
        assert json.loads((root / "champions" / "feed.json").read_text())["revision"] == "r2"
        assert rank(published["url"])["arm"] == "champion"
    finally:
        p.close()
    assert stop_leftovers(root.resolve()) == []  # close() stopped every server, the kept old one included
