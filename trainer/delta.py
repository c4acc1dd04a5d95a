"""Deltas: a proposed change against Φ, never a whole config (the paper's lesson L1).

A delta names one component and carries a JSON merge patch (RFC 7386) of that component's settings
and/or plugin code for it. Reward "code" is SQL, so a reward delta is a patch of its SQL fields.
Where one idea needs settings of other components too (the paper's optimizer change came with gradient
clipping, which lives in `training`), `also` carries merge patches of those components' settings (no code):

    {"component": "optimizer", "patch": {"name": "AdamW", "lr": 0.002}, "also": {"training": {"grad_clip": 1.0}}}
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from cambrian.errors import ConfigError
from cambrian.trainer.config import (COMPONENTS, EVALUATION_SETTINGS, Component, ModelConfig, _format_errors,
                                     parse_config, read_structured_file)

MAX_CODE_CHARS = 20_000


class Delta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    component: Component
    patch: dict[str, Any] = Field(default_factory=dict, description="JSON merge patch of config[component]")
    code: str | None = Field(None, description="plugin code for the optimizer or architecture component")
    also: dict[Component, dict[str, Any]] = Field(
        default_factory=dict, description="JSON merge patches of other components' settings the same idea needs")

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
        for other, patch in self.also.items():
            if other == self.component:
                raise ValueError(f"also.{other}: put changes of the delta's own component in `patch`")
            if not patch:
                raise ValueError(f"also.{other}: an empty patch changes nothing; leave it out")
            if "code" in patch:
                raise ValueError(f"also.{other}: plugin code goes only in the delta's own `code` field")
            if other == "reward":  # its label is what val_loss, the other components' objective, is measured on
                raise ValueError("also.reward: a reward change is a delta of component reward, scored by the reward's "
                                 "objective; beside another change it would redefine the label val_loss is measured on")
        for component, patch in self.patches().items():
            for key, why in EVALUATION_SETTINGS.get(component, {}).items():
                if key in patch:
                    where = "patch" if component == self.component else f"also.{component}"
                    raise ValueError(f"{where}.{key}: {component}.{key} defines the evaluation, not the model ({why}): "
                                     "a delta cannot change it")
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_also(self, handler):
        # a single-component delta serializes (and hashes, see key()) as before `also` existed
        data = handler(self)
        if not data.get("also"):
            data.pop("also", None)
        return data

    def patches(self) -> dict[str, dict[str, Any]]:
        """Every component this delta patches, its own first."""
        return {self.component: self.patch, **self.also}

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def summary(self) -> str:
        parts = [f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(self.patch.items())]
        if self.code:
            parts.append(f"code({len(self.code.splitlines())} lines)")
        text = f"{self.component}: " + ", ".join(parts)
        for other, patch in sorted(self.also.items()):
            text += f"; {other}: " + ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(patch.items()))
        return text


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
    for component, patch in delta.patches().items():
        data[component] = merge_patch(data[component], patch)
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
    for component, patch in delta.patches().items():
        where = "patch" if component == delta.component else f"also.{component}"
        for key in patch:
            if key in fields[component]:
                continue
            owners = [c for c in COMPONENTS if key in fields[c]]
            if owners:
                raise ConfigError(f"{source}: {where}.{key} is not a setting of component {component}: {key} belongs to "
                                  f"component {' or '.join(owners)}; put it in `also.{owners[0]}` (or a delta with "
                                  f"`component: {owners[0]}`)")
            raise ConfigError(f"{source}: {where}.{key} is not a setting of component {component}, which has: "
                              f"{', '.join(sorted(fields[component] - {'code'}))}")


def load_delta(path: str | Path) -> Delta:
    return parse_delta(read_structured_file(path), str(path))
