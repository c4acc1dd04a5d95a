"""Generate crds/*.yaml from the pydantic models in cambrian.operator.api.

    python -m cambrian.operator.crdgen [OUT_DIR]      # default: the repo's crds/

Pydantic's JSON schema is turned into a structural OpenAPI v3 schema: $refs inlined, Optional[X]
becomes X, exclusive bounds use the OpenAPI 3.0 boolean form, titles dropped, and defaults made by
default factories emitted, so the API server fills nested objects the way pydantic does. The
x-kubernetes-* extensions attached in api.py pass through unchanged.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import to_jsonable_python

from cambrian.operator import api

REPO_CRDS = Path(__file__).resolve().parent.parent / "crds"

# kind -> plural, singular, short names, printer columns
NAMES = {
    "Evolution": ("evolutions", "evolution", ["evo"]),
    "Hypothesis": ("hypotheses", "hypothesis", ["hyp"]),
    "Rollout": ("rollouts", "rollout", ["ro"]),
}


def _col(name: str, path: str, type_: str = "string", priority: int = 0, description: str = "") -> dict:
    out = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        out["priority"] = priority
    if description:
        out["description"] = description
    return out


AGE = _col("Age", ".metadata.creationTimestamp", "date")
COLUMNS = {
    "Evolution": [
        _col("Phase", ".status.phase"),
        _col("Reason", ".status.reason", description="why the phase is not Running"),
        _col("Champion", ".status.champion.name"),
        _col("Wakeups", ".status.counters.wakeups", "integer"),
        _col("Live", ".status.counters.live", "integer"),
        _col("Launched", ".status.counters.launched", "integer"),
        _col("Decision", ".status.lastDecision.outcome"),
        _col("Dollars", ".status.spend.dollars", "number", priority=1),
        AGE,
    ],
    "Hypothesis": [
        _col("Component", ".spec.component"),
        _col("Phase", ".status.phase"),
        _col("Score", ".status.offlineScore", "number", description="offline proxy metric of the component"),
        _col("Verdict", ".status.verdict", description="better, promising or not_better against the noise floor"),
        _col("Metric", ".status.offlineMetric", priority=1),
        _col("Attempts", ".status.attempts", "integer", priority=1),
        _col("Decision", ".status.online.decision"),
        _col("Reason", ".status.reason", priority=1),
        AGE,
    ],
    "Rollout": [
        _col("Phase", ".status.phase"),
        _col("Weights", ".status.weightsSummary", description="traffic percent per arm"),
        _col("Step", ".status.step", "integer"),
        _col("Decision", ".status.decision"),
        _col("Winner", ".status.winner", priority=1),
        _col("Effect", ".status.effects[0].estimate", "number", priority=1,
             description="the first treatment's north-star effect at the latest readout (a fraction when relative)"),
        _col("Planned", ".status.effects[0].plannedEffect", "number", priority=1,
             description="the effect the first treatment's design was sized for"),
        _col("Reason", ".status.reason", priority=1),
        AGE,
    ],
}

_DROP = {"title"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
            node = {**target, **node}
        else:
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express a union in a structural schema: {options}")
            node = {**options[0], **node}
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")  # not allowed in CRDs; unknown fields are pruned or rejected
    if node.get("default", 0) is None:
        node.pop("default")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            node["minimum" if key == "exclusiveMinimum" else "maximum"] = node[key]
            node[key] = True
    if node.get("additionalProperties") is True:
        # dict[str, Any]: free-form JSON. (A map with untyped values would vanish from the CEL type
        # of its parent, so rules could not even test has(); an object keeping unknown fields can.)
        node.pop("additionalProperties")
        node["x-kubernetes-preserve-unknown-fields"] = True
    if isinstance(node.get("description"), str):
        node["description"] = " ".join(node["description"].split())  # docstrings' line breaks: kubectl rewraps
    if node.get("format") == "date-time":
        node["type"] = "string"
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return {k: out[k] for k in sorted(out, key=_key_order)}


_FIRST = ["type", "description", "required", "properties", "items", "additionalProperties"]


def _key_order(key: str) -> tuple[int, str]:
    if key in _FIRST:
        return (_FIRST.index(key), key)
    return (len(_FIRST) + key.startswith("x-kubernetes"), key)


class _KubeSchema(GenerateJsonSchema):
    """Also emit defaults made by default factories, so the API server fills nested objects exactly
    as pydantic does (and CEL rules see the same values). Empty lists and maps stay absent."""

    def default_schema(self, schema):  # type: ignore[override]
        if "default_factory" not in schema:
            return super().default_schema(schema)
        out = self.generate_inner(schema["schema"])
        value = schema["default_factory"]()
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        if value not in ([], {}):
            out = {**out, "default": to_jsonable_python(value)}
        return out


def schema_of(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_KubeSchema)
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def _doc(model: type) -> str:
    """A class docstring as one line (kubectl explain rewraps it)."""
    return " ".join((model.__doc__ or "").split())


def _field_description(kind: str, name: str) -> str:
    return api.KINDS[kind].model_fields[name].description or ""


def crd(kind: str) -> dict[str, Any]:
    """The CRD of a kind. Every property but metadata has a description (`kubectl explain`): the
    fields' own, or their model's docstring; the object's from its kind's docstring, spec's and
    status's from theirs."""
    plural, singular, short = NAMES[kind]
    spec_schema = schema_of(api.SPECS[kind])
    status_schema = schema_of(api.STATUSES[kind])
    # metadata stays bare: the API server refuses anything in it but name and generateName, and
    # `kubectl explain` describes it from ObjectMeta.
    meta = {name: {"type": "string", "description": _field_description(kind, field)}
            for name, field in (("apiVersion", "api_version"), ("kind", "kind"))}
    meta["metadata"] = {"type": "object"}
    doc = _doc(api.KINDS[kind])
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}", "labels": {"app.kubernetes.io/part-of": "cambrian"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short,
                "categories": ["cambrian"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": COLUMNS[kind],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            **({"description": doc} if doc else {}),
                            "required": ["spec"],
                            "properties": {
                                **meta,
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `python -m cambrian.operator.crdgen` from operator/api.py; do not edit by hand.\n"


# Go's YAML 1.1 parser (sigs.k8s.io/yaml) reads these bare words as booleans, which would turn the
# property `n` into `false`; PyYAML leaves some of them unquoted, so quote them explicitly.
YAML11_BOOLEANS = {"y", "Y", "n", "N", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"}


class _CrdDumper(yaml.SafeDumper):
    def represent_str(self, data: str) -> yaml.ScalarNode:
        if data in YAML11_BOOLEANS:
            return self.represent_scalar("tag:yaml.org,2002:str", data, style="'")
        return super().represent_str(data)


_CrdDumper.add_representer(str, _CrdDumper.represent_str)


def render(kind: str) -> str:
    return HEADER + yaml.dump(crd(kind), Dumper=_CrdDumper, sort_keys=False, width=110, allow_unicode=True)


def file_name(kind: str) -> str:
    return f"{NAMES[kind][0]}.{api.GROUP}.yaml"


def write(out_dir: Path = REPO_CRDS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in NAMES:
        path = out_dir / file_name(kind)
        path.write_text(render(kind))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_CRDS):
        print(p)
