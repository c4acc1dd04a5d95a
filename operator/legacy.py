"""The old local settings formats, converted to the CRD objects local mode runs (issue 12: one input format).

`cambrian evolve --config evolve.yaml` (the settings of agents/settings.py, CAMBRIAN_EVOLVE_* overrides
included) becomes an Evolution object that the LocalDriver reconciles like `cambrian evolve -f`: the
object is written to RUN_DIR/evolution.yaml, so the next run can take it with -f. Settings of this machine
(data_dir, run_dir, workers, limits, train_command) stay settings of the driver. A setting the Evolution has
no field for is refused (exit 2) in one line that names the field to use instead; nothing is dropped
silently.

The old local rollout format names its treatments by bundle folder only, while a Rollout's treatments name
the Hypothesis they serve (spec.treatments[].hypothesisRef): it is refused with a pointer to the Rollout
format (manifests/examples/rollout.yaml).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cambrian.errors import ConfigError

EVOLUTION_FILE = "evolution.yaml"

# setting (as written in evolve.yaml) -> what to use instead; refused whenever the file or the environment sets it
NO_EQUIVALENT = {
    "generations": "spec.agent.budgets.evaluations (the agents wake up every spec.cadence.offline until a budget is spent)",
    "warm_start": "Hypothesis objects in the run folder (a human Hypothesis re-evaluates a known change)",
    "sql": "nothing: the proposers of the Evolution do not query the data",
    "journal_tokens": "nothing: the Evolution's proposers see the Hypothesis objects",
    "online_metrics": "spec.objective.northStar",
    "steering": "spec.agent.personas and spec.agent.quotas",
    "seed": "nothing: the proposer of each wake-up is seeded by the wake-up's number",
    "provider.temperature": "nothing: spec.agent sets the provider, model and endpoint only",
    "provider.max_output_tokens": "nothing: spec.agent sets the provider, model and endpoint only",
    "provider.structured": "nothing: proposals always use the structured output schema",
    "provider.retries": "nothing: an unusable answer is reported and the next wake-up asks again",
    "provider.timeout_s": "nothing: spec.agent sets the provider, model and endpoint only",
    "provider.prices": "spec.agent.budgets.dollars (priced by the built-in price table)",
    "noise.confirm_top": "spec.noise.confirmSeeds (every promising hypothesis is confirmed)",
    "budgets.max_train_seconds": "spec.agent.budgets.evaluations or spec.agent.budgets.gpuHours",
}
KEY_ENV = {"gemini": "GEMINI_API_KEY", "openai": "OPENAI_API_KEY"}
DEFAULT_MODEL = {"gemini": "gemini-2.5-pro"}


@dataclass
class LocalRun:
    """An Evolution object and the driver settings of this machine that the old file also held."""

    evolution: dict[str, Any]
    run_dir: Path
    data_dir: Path
    workers: int
    limits: Any  # agents.settings.RunLimits
    train_command: list[str] | None


def _refuse(source: str, setting: str, instead: str) -> None:
    raise ConfigError(f"{source}: `{setting}` has no Evolution field; use {instead}",
                      hint="write an Evolution object (manifests/examples/evolution.yaml) and run "
                           "`cambrian evolve -f FILE --dir DIR`")


def _explicit(cfg: Any) -> set[str]:
    """The settings the file (or the environment) gave, as dotted names."""
    out = set(cfg.model_fields_set)
    for name in ("provider", "noise", "budgets", "warm_start", "sql", "limits"):
        if name in cfg.model_fields_set:
            out |= {f"{name}.{k}" for k in getattr(cfg, name).model_fields_set}
    return out


def evolution_from_settings(cfg: Any, source: str, name: str = "evolve") -> LocalRun:
    """The Evolution equivalent to an EvolveConfig (agents/settings.py); ConfigError names a setting without one."""
    from cambrian.operator import api
    from cambrian.operator.local_driver import NO_REVIEW
    from cambrian.trainer.config import load_config
    from cambrian.trainer.delta import merge_patch

    given = _explicit(cfg)
    for setting, instead in NO_EQUIVALENT.items():
        if setting in given:
            _refuse(source, setting, instead)
    if "repair" in given and not cfg.repair:
        _refuse(source, "repair: false", "nothing: failed proposals always go back to their persona once")
    p = cfg.provider
    if p.api_key_env and p.api_key_env != KEY_ENV.get(p.kind):
        _refuse(source, "provider.api_key_env", f"the variable {KEY_ENV.get(p.kind, 'of the provider')} "
                                                "(spec.agent.apiKeySecretRef names the Secret in a cluster)")
    b = cfg.budgets
    if b.max_evaluations is None:
        raise ConfigError(f"{source}: set budgets.max_evaluations (spec.agent.budgets.evaluations): an Evolution "
                          "proposes until a budget is spent, and `generations` has no Evolution field")
    baseline = load_config(cfg.baseline).model_dump(mode="json") if cfg.baseline else {}
    if cfg.baseline_overrides:
        baseline = merge_patch(baseline, cfg.baseline_overrides)
    agent: dict[str, Any] = {
        "provider": p.kind, "personas": list(cfg.personas),
        "proposalsPerWakeup": sum(cfg.quotas.as_dict().values()), "quotas": cfg.quotas.as_dict(),
        "budgets": {k: v for k, v in (("evaluations", b.max_evaluations), ("tokens", b.max_tokens),
                                      ("dollars", b.max_dollars)) if v is not None},
    }
    model = p.model or DEFAULT_MODEL.get(p.kind)
    if p.kind != "builtin" and model:
        agent["model"] = model
    if p.base_url:
        agent["baseUrl"] = p.base_url
    n = cfg.noise
    obj = {
        "apiVersion": api.API_VERSION, "kind": "Evolution", "metadata": {"name": name},
        "spec": {
            "baseline": baseline,
            # read by rollouts only, and this loop starts none (the old format ran the offline loop alone)
            "objective": {"northStar": [{"name": "watch_minutes", "direction": "maximize"}]},
            "agent": agent,
            "cadence": {"offline": "5m", "online": NO_REVIEW},
            "noise": {"baselineSeeds": n.baseline_seeds, "confirmSeeds": n.confirm_seeds, "z": n.z,
                      "minFloor": n.min_floor},
            "training": {"gpu": {"count": 0}, "activeDeadline": f"{math.ceil(cfg.limits.wall_seconds)}s",
                         "workers": cfg.limits.workers},
            "data": {"world": _world_of(cfg.data_dir)},
        },
    }
    try:
        api.parse_resource(obj)
    except ConfigError as exc:
        raise ConfigError(f"{source}: converted to an Evolution: {exc}") from None
    return LocalRun(obj, Path(cfg.run_dir), Path(cfg.data_dir), cfg.workers, cfg.limits, cfg.train_command)


def _world_of(data_dir: Path) -> dict[str, int]:
    """spec.data.world naming the world in data_dir (the driver is given data_dir itself)."""
    try:
        w = json.loads((Path(data_dir) / "world.json").read_text())
        return {"users": int(w["n_users"]), "days": int(w["days"]), "seed": int(w.get("seed", 0))}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def refuse_rollout_settings(source: str) -> None:
    raise ConfigError(f"{source}: `treatments` names bundle folders only; a Rollout's treatments name the "
                      "Hypothesis they serve (spec.treatments[].hypothesisRef) and ramp by "
                      "spec.ramp.steps[].weights/duration",
                      hint="write a Rollout object (manifests/examples/rollout.yaml) and run "
                           "`cambrian rollout -f FILE --dir DIR --data WORLD`")
