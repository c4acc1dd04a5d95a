"""Declared features reach the models (issue 17): each declared categorical feature is an id column with a
vocabulary from the training rows (index 0 for anything unseen), each numeric feature a standardised input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from cambrian.errors import ConfigError
from cambrian.trainer.bundle import load_bundle
from cambrian.trainer.data import load_dataset
from cambrian.trainer.delta import Delta, apply_delta
from cambrian.trainer.features import RESERVED, build_catalogue, load_catalogue
from cambrian.trainer.models import build_model
from cambrian.trainer.schema import WORLD, DataSchema
from cambrian.trainer.train import train

def _shop() -> dict:
    """A user's own declaration of the world's tables with a string category and a price per item, its own label
    (a click not followed by a hate) and its own proxies (a completion correlation beside the AUC)."""
    shop = WORLD.model_dump(mode="json", exclude_defaults=True)
    shop["tables"]["items"]["columns"] |= {"category": "string", "price": "float"}
    return {**shop, "name": "shop", "categorical": ["items.category", "users.home_topic"], "numeric": ["items.price"],
            "label": {"column": "impressions.click", "min": 0, "max": 1,
                      "expr": "impressions.click = 1 AND impressions.hate = 0"},
            "proxies": [{"name": "auc", "kind": "auc", "signal": "impressions.click = 1 AND impressions.hate = 0"},
                        {"name": "completion_corr", "signal": "LEAST(impressions.completion, 1.0)"}]}


SHOP = _shop()

FEATURE_PLUGIN = """
class Model(nn.Module):
    def __init__(self, spec, cfg):
        super().__init__()
        self.item = nn.Embedding(spec.size("item"), 8)
        self.category = nn.Embedding(spec.size("category"), 8)
        self.out = nn.Linear(17, 1)

    def forward(self, batch):
        x = torch.cat([self.item(batch["item"]), self.category(batch["category"]), batch["price"].unsqueeze(-1)], 1)
        return self.out(x).squeeze(-1)
"""


@pytest.fixture(scope="module")
def shop(world_dir, tmp_path_factory):
    """The world with a declared string category and a price per item; one item has a category of its own and
    no training rows, so training never sees that category."""
    out = tmp_path_factory.mktemp("shop") / "data"
    shutil.copytree(world_dir, out, ignore=shutil.ignore_patterns("truth"))
    items = pd.read_parquet(out / "items.parquet")
    rng = np.random.default_rng(0)
    items["category"] = [f"c{i % 5}" for i in items["item_id"]]
    items["price"] = rng.gamma(2.0, 10.0, len(items))
    lone = int(items["item_id"].iloc[-1])
    items.loc[items["item_id"] == lone, "category"] = "brand-new"
    items.to_parquet(out / "items.parquet", index=False)
    imp = pd.read_parquet(out / "impressions.parquet")
    last = imp["day"].max()
    imp[(imp["item_id"] != lone) | (imp["day"] == last)].to_parquet(out / "impressions.parquet", index=False)
    (out / "shop.yaml").write_text(yaml.safe_dump(SHOP))
    meta = json.loads((out / "world.json").read_text())
    (out / "world.json").write_text(json.dumps({**meta, "declaration": "shop.yaml"}))
    return out, lone, items


def test_the_world_declaration_yields_the_worlds_features(world_dir, quick_config):
    spec = load_dataset(world_dir, quick_config).spec
    assert spec.fields == ("user", "item", "topic", "home_topic")
    assert spec.dense == ("length_min", "thumb_intensity") and spec.n_fields == 5


def test_vocabularies_and_statistics_come_from_the_training_rows_only():
    schema = DataSchema.model_validate(SHOP)
    items = pd.DataFrame({"item_id": [0, 1, 2, 3], "category": ["a", "b", "a", "new"], "price": [1.0, 3.0, 5.0, 100.0]})
    users = pd.DataFrame({"user_id": [0, 1], "home_topic": [7, 9]})
    # training rows: items 0, 1, 2 (item 0 twice), user 0 only; item 3 and user 1 are never trained on
    cat = build_catalogue(schema, {"items": items, "users": users}, np.bincount([0, 0, 0, 0]),
                          np.bincount([0, 0, 1, 2]), n_users=3, n_items=5)  # rows per id
    by = {c.name: c for c in cat.spec.categorical}
    assert by["category"].vocabulary == ("a", "b") and by["home_topic"].vocabulary == (7,)
    assert cat.columns["category"].tolist() == [1, 2, 1, RESERVED, RESERVED]  # "new" and item 4 (no row): unknown
    assert cat.columns["home_topic"].tolist() == [1, RESERVED, RESERVED]
    price = cat.spec.numeric[0]
    rows = np.array([1.0, 1.0, 3.0, 5.0])  # per training row, as the model sees them
    assert price.mean == pytest.approx(rows.mean()) and price.std == pytest.approx(rows.std())
    np.testing.assert_allclose(cat.columns["price"][:4], (items["price"] - rows.mean()) / rows.std(), rtol=1e-6)
    assert cat.columns["price"][4] == 0  # an item without a row: the training mean
    batch = cat.features(np.array([1, 0]), np.array([3, 1]))
    assert batch["category"].tolist() == [RESERVED, 2] and batch["dense"].shape == (2, 1)


def test_a_feature_outside_a_per_id_table_is_refused_in_one_line():
    bad = DataSchema.model_validate({**SHOP, "categorical": ["impressions.day"], "numeric": []})
    frames = {"impressions": pd.DataFrame({"user_id": [0], "item_id": [0], "day": [0]})}
    with pytest.raises(ConfigError, match="table 'impressions' holds features but is not keyed by user_id alone"):
        build_catalogue(bad, frames, np.ones(1), np.ones(1), 1, 1)


def test_a_declared_category_and_price_become_model_inputs_and_train(shop, quick_config, tmp_path):
    folder, lone, items = shop
    data = load_dataset(folder, quick_config)
    assert data.spec.fields == ("user", "item", "category", "home_topic") and data.spec.dense == ("price",)
    assert data.catalogue.columns["category"][lone] == RESERVED
    model = build_model(data.spec, quick_config.architecture)
    sizes = [t.num_embeddings for t in model.emb.tables]
    assert sizes[2] == 6  # c0..c4 and the reserved index; "brand-new" had no training row
    # the plugin interface: the declared features by name
    cfg = apply_delta(quick_config, Delta(component="architecture", code=FEATURE_PLUGIN))
    cfg.training.epochs = 1
    metrics = train(cfg, folder, tmp_path / "plugin")
    assert 0.5 < metrics["auc"] < 1.0
    # the declaration's own proxies, and its own label (a click not followed by a hate) is what is learnt and judged
    assert metrics["declaration"] == "shop" and metrics["proxies"] == ["auc", "completion_corr"]
    assert -1 <= metrics["completion_corr"] <= 1 and "long_watch_corr" not in metrics
    imp = pd.read_parquet(folder / "impressions.parquet")
    held = imp[imp["day"] == imp["day"].max()].sort_values(["user_id", "item_id"], kind="stable")  # the held-out order
    expected = ((held["click"] == 1) & (held["hate"] == 0)).to_numpy(np.float32)
    assert expected.sum() < held["click"].sum()  # the label differs from the click somewhere
    np.testing.assert_array_equal(data.val.label, expected)
    np.testing.assert_array_equal(data.val.signals["completion_corr"], np.minimum(held["completion"], 1.0))
    spec = json.loads((tmp_path / "plugin" / "bundle" / "bundle.json").read_text())["feature_spec"]
    assert [c["name"] for c in spec["categorical"]] == ["category", "home_topic"]
    assert spec["numeric"][0]["name"] == "price" and spec["numeric"][0]["mean"] > 0


def test_an_unseen_category_is_served_through_the_reserved_index(shop, quick_config, tmp_path):
    folder, lone, items = shop
    cfg = quick_config.model_copy(deep=True)
    cfg.training.epochs = 1
    train(cfg, folder, tmp_path)
    bundle_dir = tmp_path / "bundle"
    catalogue = load_catalogue(bundle_dir / "features.npz")
    assert catalogue.columns["category"][lone] == RESERVED
    assert catalogue.columns["category"][0] != RESERVED
    # the served features of that item: the reserved index, and the program scores it
    twin = shutil.copytree(bundle_dir, tmp_path / "twin")
    codes = catalogue.columns["category"].copy()
    codes[lone] = codes[0]  # as if its category had been seen
    catalogue.columns["category"] = codes
    from cambrian.trainer.features import save_catalogue

    save_catalogue(twin / "features.npz", catalogue)
    users, candidates = np.array([0, 1]), np.array([[lone, 0], [lone, 1]])
    with load_bundle(bundle_dir) as served, load_bundle(twin) as seen:
        a, b = served.score(users, candidates), seen.score(users, candidates)
    assert np.isfinite(a).all()
    assert not np.allclose(a[:, 0], b[:, 0]) and np.allclose(a[:, 1], b[:, 1])


def test_a_data_directory_naming_a_missing_declaration_is_refused_in_one_line(world_dir, quick_config, tmp_path):
    folder = shutil.copytree(world_dir, tmp_path / "data", ignore=shutil.ignore_patterns("truth"))
    meta = json.loads((folder / "world.json").read_text())
    (folder / "world.json").write_text(json.dumps({**meta, "declaration": "nope.yaml"}))
    with pytest.raises(ConfigError, match=r"world.json: declaration 'nope.yaml': No such file") as err:
        load_dataset(folder, quick_config)
    assert "\n" not in str(err.value)
