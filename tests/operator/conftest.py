"""Offline admission for the CRDs: structural defaulting, OpenAPI value checks and the CEL rules
(x-kubernetes-validations) evaluated with cel-python, including transition rules with oldSelf.

This mirrors what kube-apiserver does closely enough to test our rules without a cluster; the
cluster team's tests (testing/cluster.py) apply the same CRDs to a real API server.
Kubernetes' CEL list library functions used by our rules (sum, isSorted) are added to cel-python.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

# Fast level-based timers when the operator runs in-process (read when handlers.py is imported).
os.environ.setdefault("CAMBRIAN_OPERATOR_INTERVAL", "1")
os.environ.setdefault("CAMBRIAN_METRICS_PORT", "0")
os.environ.setdefault("CAMBRIAN_METRICS_ADDR", "127.0.0.1")  # the exporter on a free port, never a fixed one

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES = REPO / "manifests" / "examples"


@functools.cache
def _load_crds() -> dict[str, dict]:
    out = {}
    for p in sorted(CRD_DIR.glob("*.cambrian.dev.yaml")):  # not kopf's peering CRDs (kopf.dev)
        doc = yaml.safe_load(p.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":  # skip kustomization.yaml
            out[doc["spec"]["names"]["kind"]] = doc
    return out


def load_crds() -> dict[str, dict]:
    return copy.deepcopy(_load_crds())


def root_schema(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# ---- CEL ----------------------------------------------------------------------------------------

def _cel_env():
    import celpy
    from celpy import celtypes

    def k8s_sum(lst):
        total = sum(lst)
        return celtypes.DoubleType(total) if any(isinstance(x, float) for x in lst) else celtypes.IntType(total)

    def is_sorted(lst):
        return celtypes.BoolType(all(lst[i] <= lst[i + 1] for i in range(len(lst) - 1)))

    return celpy, celpy.Environment(), {"sum": k8s_sum, "isSorted": is_sorted}


_CEL = None
_PROGRAMS: dict[str, Any] = {}


def cel_eval(rule: str, self_value: Any, old_value: Any = None) -> bool:
    global _CEL
    if _CEL is None:
        _CEL = _cel_env()
    celpy, env, funcs = _CEL
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = env.program(env.compile(rule), functions=funcs)
    act = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        act["oldSelf"] = celpy.json_to_cel(old_value)
    result = _PROGRAMS[rule].evaluate(act)
    if isinstance(result, Exception) or not isinstance(result, bool) and type(result).__name__ == "CELEvalError":
        raise AssertionError(f"CEL rule {rule!r} failed to evaluate: {result}")
    return bool(result)


# ---- structural defaulting and validation -------------------------------------------------------

def apply_defaults(schema: dict, value: Any) -> Any:
    if isinstance(value, dict) and schema.get("type") == "object":
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        if "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
            for k in value:
                value[k] = apply_defaults(schema["additionalProperties"], value[k])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def check(schema: dict, value: Any, path: str, old: Any = None, errors: list | None = None) -> list[str]:
    errors = [] if errors is None else errors
    t = schema.get("type")
    if t == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = t is None or isinstance(value, _TYPES[t])
    if not ok:
        errors.append(f"{path}: expected {t}, got {type(value).__name__}")
        return errors
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: unsupported value {value!r}: supported values: {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and (value < schema["minimum"] or schema.get("exclusiveMinimum") and value == schema["minimum"]):
            errors.append(f"{path}: should be greater than {'' if schema.get('exclusiveMinimum') else 'or equal to '}{schema['minimum']}")
        if "maximum" in schema and (value > schema["maximum"] or schema.get("exclusiveMaximum") and value == schema["maximum"]):
            errors.append(f"{path}: should be less than {'' if schema.get('exclusiveMaximum') else 'or equal to '}{schema['maximum']}")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", 1 << 30) or len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: length out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: should match {schema['pattern']!r}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", 1 << 30) or len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: must have {schema.get('minItems', 0)}..{schema.get('maxItems', '∞')} items")
        lt = schema.get("x-kubernetes-list-type")
        if lt == "set" and len({repr(v) for v in value}) != len(value):
            errors.append(f"{path}: duplicate entries in a set")
        if lt == "map":
            keys = [tuple(v.get(k) for k in schema["x-kubernetes-list-map-keys"]) for v in value]
            if len(set(keys)) != len(keys):
                errors.append(f"{path}: duplicate map keys")
        for i, v in enumerate(value):
            check(schema["items"], v, f"{path}[{i}]", None, errors)
    if isinstance(value, dict):
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{path}.{req}: Required value")
        if len(value) > schema.get("maxProperties", 1 << 30):
            errors.append(f"{path}: too many properties")
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: should have at least {schema['minProperties']} properties")
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                check(props[k], v, f"{path}.{k}", old.get(k) if isinstance(old, dict) else None, errors)
            elif isinstance(schema.get("additionalProperties"), dict):
                check(schema["additionalProperties"], v, f"{path}.{k}", None, errors)
            elif props and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{k}: unknown field")
    if errors:
        return errors  # the API server skips CEL when the value is already invalid
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        if not cel_eval(rule["rule"], value, old if transition else None):
            errors.append(f"{path}: Invalid value: {rule['message']}")
    return errors


def admit(kind: str, obj: dict, old: dict | None = None) -> tuple[list[str], dict]:
    """Returns (errors, the defaulted object) like a create (old=None) or an update."""
    schema = root_schema(_load_crds()[kind])
    obj = apply_defaults(schema, copy.deepcopy(obj))
    old = apply_defaults(schema, copy.deepcopy(old)) if old is not None else None
    return check(schema, obj, "", old), obj


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


@pytest.fixture
def crds() -> dict[str, dict]:
    return load_crds()


@pytest.fixture
def admission():
    return admit


@pytest.fixture
def examples():
    return example
