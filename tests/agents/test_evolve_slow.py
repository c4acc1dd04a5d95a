"""End-to-end runs with the REAL trainer (`cambrian train` in the sandbox). Slow: minutes on a laptop CPU."""

import json
import subprocess
import sys

import pytest

from cambrian.agents.evolve import Evolution, run_evolution
from cambrian.agents.journal import Journal
from cambrian.agents.proposers.llm import GeminiProposer
from cambrian.agents.runner import RunLimits, run_candidate
from cambrian.agents.settings import parse_evolve_config
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]

HANG = """
class Model(nn.Module):
    def __init__(self, spec, cfg):
        super().__init__()
        self.w = nn.Linear(1, 1)
        while True:
            pass

    def forward(self, batch):
        return batch["user"].float()
"""

BOMB = """
class Model(nn.Module):
    def __init__(self, spec, cfg):
        super().__init__()
        self.w = nn.Linear(1, 1)
        hog = []
        while True:
            hog.append(torch.ones(25_000_000))

    def forward(self, batch):
        return batch["user"].float()
"""


@pytest.mark.parametrize("code,stage", [(HANG, "timeout"), (BOMB, "memory")])
def test_real_trainer_hostile_plugin_is_killed(tmp_path, tiny_world, code, stage):
    delta = parse_delta({"component": "architecture", "patch": {}, "code": code})
    out = run_candidate(ModelConfig(), delta, tiny_world, tmp_path / "c", RunLimits(wall_seconds=120, rss_mb=2500))
    assert not out.ok and out.failure.stage == stage, (out.failure, out.log_tail)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    data = tmp_path_factory.mktemp("small") / "world"
    subprocess.run([sys.executable, "-m", "cambrian.cli", "world", "generate", "--out", str(data), "--users", "400",
                    "--days", "6", "--easy"], check=True, capture_output=True)
    return data


def test_recorded_gemini_with_real_trainer(tmp_path, small_world, gemini_replay):
    """The recorded Gemini run passes with real training on a small generated world: a hypothesis beats
    the baseline beyond the noise floor and every other one says why it did not."""
    tiny_world = small_world
    server = gemini_replay(["optimizer_valid.json", "architecture_valid.json", "reward_valid.json"])
    cfg = parse_evolve_config({
        "data_dir": str(tiny_world), "run_dir": str(tmp_path / "run"), "generations": 1, "workers": 2,
        "provider": {"kind": "gemini"}, "budgets": {"max_evaluations": 20},
        "limits": {"wall_seconds": 300, "threads": 1},
        "noise": {"baseline_seeds": 3, "confirm_top": 1, "confirm_seeds": 2},
    }, env={})
    result = Evolution(cfg, proposer=GeminiProposer(api_key="k", base_url=server.url)).run()
    j = Journal(cfg.run_dir)
    assert result.winners, [(h.id, h.reason) for h in j.hypotheses]
    for h in j.hypotheses:
        assert h.phase in ("Scored", "Failed", "Rejected")
        if h.id != "baseline" and h.verdict != "better":
            assert h.reason  # why it lost
    assert j.state.evaluations <= 20


def test_builtin_beats_baseline_within_30_evaluations_on_default_world(tmp_path):
    """The issue's "done when": built-in proposer, default world, at most 30 evaluations."""
    data = tmp_path / "world"
    subprocess.run([sys.executable, "-m", "cambrian.cli", "world", "generate", "--out", str(data), "--easy"], check=True)
    cfg = parse_evolve_config({
        "data_dir": str(data), "run_dir": str(tmp_path / "run"), "generations": 10, "workers": 2,
        "budgets": {"max_evaluations": 30}, "limits": {"wall_seconds": 1800, "threads": 1},
    }, env={})
    result = run_evolution(cfg)
    assert result.spend.evaluations <= 30
    assert result.winners, json.dumps(result.to_json(), default=str)[:4000]
    losers = [h for h in Journal(cfg.run_dir).hypotheses if h.id != "baseline" and h.verdict != "better"]
    assert losers and all(h.reason for h in losers)
