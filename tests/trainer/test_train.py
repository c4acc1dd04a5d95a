"""Real torch training on the simulated world: it learns, it is reproducible, its bundle round-trips."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cambrian.agents.canonical import with_seed
from cambrian.trainer.bundle import load_bundle
from cambrian.trainer.data import load_dataset
from cambrian.trainer.delta import Delta, apply_delta
from cambrian.trainer.models import build_model
from cambrian.trainer.fit import predict
from cambrian.trainer.train import evaluate, train

PLUGIN_OPTIMIZER = """
def build_optimizer(params, cfg):
    return torch.optim.SGD(params, lr=cfg.lr * 10, momentum=0.9)
"""


def test_training_beats_the_untrained_model(world_dir, quick_config, tmp_path):
    data = load_dataset(world_dir, quick_config)
    torch.manual_seed(quick_config.training.seed)
    model = build_model(data.spec, quick_config.architecture)
    untrained = evaluate(quick_config, predict(model, data.val, torch.device("cpu")), data.val)
    metrics = train(quick_config, world_dir, tmp_path)
    assert metrics["val_loss"] < untrained["val_loss"] - 0.01
    assert metrics["auc"] > 0.6 > untrained["auc"] - 0.05
    assert metrics["n_train"] > 0 and metrics["n_val"] > 0 and metrics["examples_per_second"] > 0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics


def test_same_seed_same_metrics_other_seed_differs(world_dir, quick_config, tmp_path):
    a = train(quick_config, world_dir, tmp_path / "a")
    b = train(quick_config, world_dir, tmp_path / "b")
    c = train(with_seed(quick_config, 7), world_dir, tmp_path / "c")  # the seed is the operator's, not a delta's
    assert a["val_loss"] == b["val_loss"] and a["auc"] == b["auc"]
    assert c["val_loss"] != a["val_loss"]


def test_bundle_round_trip_scores_like_the_trained_model(world_dir, quick_config, tmp_path):
    train(quick_config, world_dir, tmp_path)
    with load_bundle(tmp_path / "bundle") as bundle:
        _check_round_trip(bundle, quick_config)


def _check_round_trip(bundle, quick_config):
    assert bundle.fingerprint == quick_config.fingerprint() and bundle.config == quick_config
    rng = np.random.default_rng(0)
    users = rng.integers(0, bundle.spec.n_users, size=5)
    candidates = rng.integers(0, bundle.spec.n_items, size=(5, 100))
    scores = bundle.score(users, candidates)
    assert scores.shape == (5, 100) and np.isfinite(scores).all()
    # Scoring a user alone gives the same numbers as in a batch (no cross-row leakage).
    np.testing.assert_allclose(bundle.score(users[:1], candidates[:1]), scores[:1], rtol=1e-5, atol=1e-6)
    assert bundle.score(users[:0], candidates[:0]).shape == (0, 100)
    with pytest.raises(ValueError, match="item ids"):
        bundle.score(users[:1], np.full((1, 3), bundle.spec.n_items))


@pytest.mark.parametrize("delta", [
    Delta(component="architecture", patch={"name": "deepfm"}),
    Delta(component="architecture", patch={"name": "dcn", "cross_layers": 1}),
    Delta(component="architecture", patch={"activation": "gelu", "dropout": 0.1, "hidden": [32]}),
    Delta(component="optimizer", code=PLUGIN_OPTIMIZER),
    Delta(component="optimizer", patch={"name": "Adagrad", "lr": 0.05}),
    Delta(component="reward", patch={"label": "watch_seconds / 60.0", "loss": "mse"}),
])
def test_every_component_kind_trains_and_bundles(world_dir, quick_config, tmp_path, delta):
    cfg = apply_delta(quick_config, delta)
    cfg.training.epochs = 1
    metrics = train(cfg, world_dir, tmp_path)
    assert np.isfinite(metrics["val_loss"])
    with load_bundle(tmp_path / "bundle") as bundle:
        assert bundle.score(np.array([0]), np.array([[0, 1, 2]])).shape == (1, 3)


def test_completion_reward_ranks_long_watches_better_than_click_reward(world_dir, quick_config, tmp_path):
    click = train(quick_config, world_dir, tmp_path / "click")
    quality = train(apply_delta(quick_config, Delta(component="reward", patch={"label": "CAST(click AS DOUBLE) * completion"})),
                    world_dir, tmp_path / "quality")
    assert quality["long_watch_corr"] > click["long_watch_corr"]
    assert click["auc"] > quality["auc"]  # the click model wins the click proxy


def test_cli_writes_metrics_bundle_and_termination_message(world_dir, tmp_path):
    term = tmp_path / "termination-log"
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--data", str(world_dir), "--out",
                           str(tmp_path / "run"), "--json", "--termination-message-path", str(term)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["ok"] and (tmp_path / "run" / "bundle" / "model.pt2").is_file()
    message = json.loads(term.read_text())
    assert message["ok"] and message["val_loss"] == printed["val_loss"]


def test_a_diverging_loss_stops_training_with_the_epoch_named(world_dir, quick_config):
    """The divergence flag stays on the device between reads (a read per step would stall a GPU); a diverged
    run still fails, naming its epoch, and never returns diverged weights."""
    from cambrian.errors import TrainingError
    from cambrian.trainer.fit import fit

    quick_config.optimizer.lr = 1e30
    data = load_dataset(world_dir, quick_config)
    with pytest.raises(TrainingError, match=r"diverged \(became infinite or NaN\) in epoch 1"):
        fit(quick_config, data, torch.device("cpu"))
    quick_config.optimizer.lr = 1e-3
    model, _ = fit(quick_config, data, torch.device("cpu"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kind", ["bce", "mse"])
def test_the_scorers_val_loss_is_the_training_loss_without_torch(kind):
    """The scorer computes val_loss in numpy (it never imports torch); it must be the loss the model trained on
    (trainer/gate.py weighted_loss), extreme logits included, and a change of weights must change it."""
    from cambrian.trainer.gate import weighted_loss
    from cambrian.trainer.metrics import scored_loss

    rng = np.random.default_rng(0)
    logits = np.r_[rng.normal(0, 3, 5000), [-80.0, 80.0, 0.0]].astype(np.float32)
    label = np.r_[rng.random(5000), [1.0, 0.0, 0.5]].astype(np.float32)
    weight = np.r_[rng.exponential(1.0, 5000), [2.0, 3.0, 0.0]].astype(np.float32)
    ours = scored_loss(kind, logits, label, weight)
    theirs = weighted_loss(kind, *(torch.from_numpy(a).double() for a in (logits, label, weight))).item()
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)
    assert scored_loss(kind, logits, label, np.ones_like(weight)) != pytest.approx(ours, rel=1e-6)


def test_the_trusted_side_of_a_run_never_imports_torch(world_dir, tmp_path):
    """A cold run (`train`: data, reward SQL, contained trainer and predictor, scoring, bundle) in a fresh
    interpreter: torch is imported by the contained steps only, never by the process that holds the labels."""
    script = (
        "import sys, json\n"
        "from cambrian.trainer.config import ModelConfig\n"
        "from cambrian.trainer.train import train\n"
        "cfg = ModelConfig.model_validate({'training': {'epochs': 1, 'cpu_threads': 1, 'device': 'cpu'}})\n"
        f"m = train(cfg, {str(world_dir)!r}, {str(tmp_path / 'out')!r})\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'sandbox': m['sandbox'], 'val_loss': m['val_loss']}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False and seen["sandbox"] == "bwrap" and np.isfinite(seen["val_loss"])
    assert (tmp_path / "out" / "bundle" / "model.pt2").is_file()
