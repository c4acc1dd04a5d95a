"""Fixtures of the local-mode tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = {"architecture": {"name": "mlp", "hidden": [8]},
        "training": {"epochs": 1, "max_train_examples": 2000, "batch_size": 512}}


@pytest.fixture(scope="session")
def real_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    cli = [sys.executable, "-m", "cambrian.cli"]
    subprocess.run([*cli, "world", "generate", "--users", "100", "--days", "3", "--seed", "1", "--out", str(root / "w")],
                   check=True, capture_output=True, timeout=300)
    (root / "c.json").write_text(json.dumps(TINY))
    r = subprocess.run([*cli, "train", "--config", str(root / "c.json"), "--data", str(root / "w"), "--out",
                        str(root / "o")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "o" / "bundle"
