import pytest
from hypothesis import given, strategies as st

from cambrian.errors import ConfigError
from cambrian.trainer.config import ModelConfig, load_config, parse_config
from cambrian.trainer.delta import Delta, apply_delta, load_delta, merge_patch, parse_delta


def test_merge_patch_follows_rfc7386():
    target = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    patch = {"a": None, "b": {"c": 5}, "e": [3], "f": {"g": 1}}
    assert merge_patch(target, patch) == {"b": {"c": 5, "d": 3}, "e": [3], "f": {"g": 1}}
    assert target == {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}  # input untouched


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | st.text(max_size=5), max_size=6))
def test_merge_patch_with_own_values_is_identity(d):
    assert merge_patch(d, d) == d
    assert merge_patch(d, {}) == d


def test_apply_delta_changes_only_its_component():
    base = ModelConfig()
    new = apply_delta(base, Delta(component="optimizer", patch={"name": "AdamW", "lr": 0.01}))
    assert (new.optimizer.name, new.optimizer.lr) == ("AdamW", 0.01)
    assert new.architecture == base.architecture and new.reward == base.reward
    assert new.fingerprint() != base.fingerprint()


def test_equivalent_deltas_share_the_config_fingerprint():
    base = ModelConfig()
    a = apply_delta(base, Delta(component="architecture", patch={"hidden": [128, 64], "dropout": 0.1}))
    b = apply_delta(base, Delta(component="architecture", patch={"dropout": 0.1, "hidden": [128, 64]}))
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("data, fragment", [
    ({"component": "optimizer"}, "must change something"),
    ({"component": "optimizer", "patch": {}, "code": "  "}, "must change something"),
    ({"component": "embeddings", "patch": {"x": 1}}, "component"),
    ({"component": "reward", "code": "x = 1"}, "only accepted for optimizer and architecture"),
    ({"component": "optimizer", "patch": {"code": "x"}}, "delta's `code` field"),
    ({"component": "optimizer", "patch": {"lr": 1}, "extra": 1}, "extra"),
    ("not a mapping", "expected a mapping"),
])
def test_invalid_deltas_are_rejected_with_the_reason(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_delta(data)


@pytest.mark.parametrize("data, field", [
    ({"component": "training", "patch": {"seed": 77}}, "patch.seed"),
    ({"component": "optimizer", "patch": {"lr": 0.01}, "also": {"training": {"seed": 77}}}, "also.training.seed"),
    ({"component": "training", "patch": {"validation_days": 3}}, "patch.validation_days"),
    ({"component": "reward", "patch": {"loss": "mse"}, "also": {"training": {"validation_days": 3}}},
     "also.training.validation_days"),
    ({"component": "reward", "patch": {"long_watch_seconds": 5.0}}, "patch.long_watch_seconds"),
])
def test_a_delta_cannot_set_the_seed_or_the_held_out_days(data, field):
    # the evaluation's settings, kept from the baseline: a candidate picking its seed or its own test rows would
    # forge its verdict against the champion
    with pytest.raises(ConfigError, match=f"{field}: .* defines the evaluation"):
        parse_delta(data)
    with pytest.raises(ValueError, match="defines the evaluation"):
        Delta.model_validate(data)


def test_a_reward_change_beside_another_component_is_refused():
    """val_loss (the optimizer's, architecture's and training's objective) is measured on the run's own label, so an
    optimizer delta carrying `also.reward` could make its label trivial (a constant) and win on val_loss."""
    data = {"component": "optimizer", "patch": {"lr": 0.01}, "also": {"reward": {"label": "0.0"}}}
    with pytest.raises(ConfigError, match="also.reward: a reward change is a delta of component reward"):
        parse_delta(data)
    # the same reward as a delta of its own is fine: it is scored by the reward's objective, a held-out proxy
    assert parse_delta({"component": "reward", "patch": {"label": "0.0"}}).component == "reward"


def test_patch_with_unknown_or_invalid_field_names_the_field():
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        apply_delta(ModelConfig(), Delta(component="optimizer", patch={"learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="architecture.dropout"):
        apply_delta(ModelConfig(), Delta(component="architecture", patch={"dropout": 1.5}))


def test_malformed_files_give_clear_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optimizer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML/JSON"):
        load_config(bad_yaml)
    with pytest.raises(ConfigError, match="no such file"):
        load_delta(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = apply_delta(ModelConfig(), Delta(component="reward", patch={"label": "CAST(click AS DOUBLE) * completion"}))
    import yaml

    path = tmp_path / "phi.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(path) == cfg
    assert parse_config(None) == ModelConfig()
