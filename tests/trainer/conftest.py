import subprocess
import sys

import pytest

from cambrian.trainer.config import ModelConfig


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A small simulated world, generated through the public CLI contract."""
    out = tmp_path_factory.mktemp("world") / "data"
    subprocess.run(
        [sys.executable, "-m", "cambrian.cli", "world", "generate", "--users", "400", "--days", "5", "--seed", "3",
         "--easy", "--out", str(out)],
        check=True, capture_output=True, text=True,
    )
    return out


@pytest.fixture
def quick_config():
    cfg = ModelConfig()
    cfg.training.epochs = 2
    return cfg
