"""Deltas: a proposed change against Φ, never a whole config (the paper's lesson L1).

A delta names one component and carries a JSON merge patch (RFC 7386) of that component's settings
and/or plugin code for it. Reward "code" is SQL, so a reward delta is a patch of its SQL fields.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cambrian.errors import ConfigError
from cambrian.trainer.config import COMPONENTS, Component, ModelConfig, _format_errors, parse_config, read_structured_file

MAX_CODE_CHARS = 20_000


class Delta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    component: Component
    patch: dict[str, Any] = Field(default_factory=dict, description="JSON merge patch of config[component]")
    code: str | None = Field(None, description="plugin code for the optimizer or architecture component")

    @model_validator(mode="after")
    def _not_empty(self) -> "Delta":
        if not self.patch and not (self.code and self.code.strip()):
            raise ValueError("a delta must change something: give a non-empty patch or code")
        if self.code is not None and self.component not in ("optimizer", "architecture"):
            raise ValueError(
                f"code is only accepted for optimizer and architecture; a {self.component} delta is a patch "
                "(the reward's code is its SQL in patch.label / patch.weight)"
            )
        if self.code is not None and len(self.code) > MAX_CODE_CHARS:
            raise ValueError(f"code is {len(self.code)} characters; the limit is {MAX_CODE_CHARS}")
        if "code" in self.patch:
            raise ValueError("put plugin code in the delta's `code` field, not in patch.code")
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def summary(self) -> str:
        parts = [f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(self.patch.items())]
        if self.code:
            parts.append(f"code({len(self.code.splitlines())} lines)")
        return f"{self.component}: " + ", ".join(parts)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_delta(config: ModelConfig, delta: Delta) -> ModelConfig:
    """Return a new Φ with the delta applied; raises ConfigError naming the offending field."""
    data = config.model_dump(mode="json")
    data[delta.component] = merge_patch(data[delta.component], delta.patch)
    if delta.code is not None:
        data[delta.component]["code"] = delta.code
    return parse_config(data, f"config after applying the {delta.component} delta")


def parse_delta(data: Any, source: str = "delta") -> Delta:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with component/patch/code, got {type(data).__name__}")
    try:
        delta = Delta.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(exc)}") from None
    _check_patch_fields(delta, source)
    return delta


def _check_patch_fields(delta: Delta, source: str) -> None:
    """A patch key its component does not have: name the component that owns it (one line, exit 2)."""
    fields = {c: set(ModelConfig.model_fields[c].annotation.model_fields) for c in COMPONENTS}
    for key in delta.patch:
        if key in fields[delta.component]:
            continue
        owners = [c for c in COMPONENTS if key in fields[c]]
        if owners:
            raise ConfigError(f"{source}: patch.{key} is not a setting of component {delta.component}: {key} belongs to component "
                              f"{' or '.join(owners)}; put it in a delta with `component: {owners[0]}`")
        raise ConfigError(f"{source}: patch.{key} is not a setting of component {delta.component}, which has: "
                          f"{', '.join(sorted(fields[delta.component] - {'code'}))}")


def load_delta(path: str | Path) -> Delta:
    return parse_delta(read_structured_file(path), str(path))
