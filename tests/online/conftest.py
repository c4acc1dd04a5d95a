"""Shared fixtures: tiny deterministic stand-in scorers served by real aiohttp servers on loopback."""

from __future__ import annotations

import pytest

from cambrian.online.runner import BackgroundApp
from cambrian.online.server import ModelServer
from cambrian.testing.scorers import ModScorer


@pytest.fixture
def arm_servers():
    apps = {}
    try:
        for name, a in (("control", 1), ("treatment", 3), ("t2", 5)):
            apps[name] = BackgroundApp.of(ModelServer(ModScorer(a), model=f"mod{a}", arm=name)).start()
        yield apps
    finally:
        for app in apps.values():
            app.stop()


@pytest.fixture
def mod_scorer():
    return ModScorer
