"""Shared pieces of the reliability suite: the bad-input corpus, a tiny world, the stand-in trainer.

The tiny world and the scripted stand-in for `cambrian train` are the agents suite's (one definition
of the data contract); they are loaded from tests/agents/conftest.py by path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cambrian.testing.fixtures import cluster, cluster_namespace  # noqa: F401  (the real control plane)
from cambrian.testing.modules import load_file

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # makes `corpus` importable
    sys.path.insert(0, str(HERE))


AGENTS = load_file("tests/agents/conftest.py", "_cambrian_agents_conftest")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A small world in the CONTRACTS.md layout, plus a truth/ folder with hidden state (as generated worlds have)."""
    data = AGENTS.write_tiny_world(tmp_path_factory.mktemp("world") / "data")
    truth = data / "truth"
    truth.mkdir(exist_ok=True)
    (truth / "item_quality.json").write_text('{"secret": "TRUTH-CANARY-7f3a"}')
    return data


@pytest.fixture(scope="session")
def fake_trainer(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("fake") / "fake_train.py"
    path.write_text(AGENTS.FAKE_TRAINER)
    return [sys.executable, str(path)]
