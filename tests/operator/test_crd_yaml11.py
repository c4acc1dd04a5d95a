"""The CRDs are read by Go's YAML 1.1 parser, where a bare `n:` key is the boolean false."""

import re
from pathlib import Path

import pytest

CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.cambrian.dev.yaml"))
BARE_BOOLEAN_KEY = re.compile(r"^\s*(?:- )?(y|Y|n|N|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF):", re.M)


@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
def test_no_key_is_a_yaml11_boolean(path):
    assert BARE_BOOLEAN_KEY.findall(path.read_text()) == []


def _property_names(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                yield from value
            yield from _property_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _property_names(item)


def test_rollout_status_keeps_the_per_arm_n_property():
    import yaml

    crd = yaml.safe_load((Path(CRDS[0]).parent / "rollouts.cambrian.dev.yaml").read_text())
    assert "n" in set(_property_names(crd))
