"""Generate a world data directory: N users living D days under a logging policy.

The return decision for the day after each logged day is drawn at the end of that day (the
overnight update), so `returned_next_day` is matured for every logged row. The dynamic state after
the last day goes to truth/state.npz: `World.load(DIR)` continues live traffic from day D.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from cambrian.errors import ConfigError
from cambrian.inputs import output_dir

from . import logs
from .params import DEFAULT_PRESET, WorldParams
from .policies import oracle_policy, parse_policy
from .sim import STATE_FILE, USER_TRUTH_DTYPES, World


def generate(
    out: str | Path,
    n_users: int = 2000,
    days: int = 14,
    seed: int = 0,
    policy: str = "random",
    n_items: int | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    preset: str = DEFAULT_PRESET,
) -> dict:
    """Write the data directory; returns its summary (see logs.summarize)."""
    if days < 1 or days > 32000:
        raise ConfigError(f"days must be in [1, 32000], got {days}")
    values = dict(overrides or {})
    values["n_users"] = n_users
    if n_items is not None:
        values["n_items"] = n_items
        values.setdefault("n_candidates", min(WorldParams.model_fields["n_candidates"].default, n_items))
        values.setdefault("slate", min(WorldParams.model_fields["slate"].default, values["n_candidates"]))
    params = WorldParams.build(preset, **values)
    name, lam = parse_policy(policy)
    out = Path(out)
    _prepare(out, force)

    world = World(params, seed)
    act = oracle_policy(world, name, lam)
    meta = {**world.describe(), "days": days, "logging_policy": policy, "preset": preset}
    meta.pop("day")

    logs.write_parquet(logs.items_frame(world.catalogue), out / logs.ITEMS)
    logs.write_parquet(logs.users_frame(world.users), out / logs.USERS)
    truth = out / logs.TRUTH_DIR
    truth.mkdir()
    logs.write_parquet(logs.items_truth_frame(world.catalogue), truth / logs.ITEMS_TRUTH)

    impressions = logs.ParquetAppender(out / logs.IMPRESSIONS, logs.IMPRESSION_DTYPES)
    user_days, user_truth, sample = [], [], []
    for _ in range(days):
        log = world.run_day(act)
        impressions.append(log.impressions)
        user_days.append(log.user_days)
        user_truth.append(log.truth)
        sample.append(log.impressions[["day", "click", "completion", "like", "skip"]])
    impressions.close()
    ud = pd.concat(user_days, ignore_index=True)
    logs.write_parquet(ud, out / logs.USER_DAYS)
    logs.write_parquet(pd.concat(user_truth, ignore_index=True)[list(USER_TRUTH_DTYPES)], truth / logs.USER_TRUTH)
    world.save_state(truth / STATE_FILE)
    # world.json last: its presence marks a complete directory
    (out / logs.WORLD_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    summary = logs.summarize(pd.concat(sample, ignore_index=True), ud)
    summary.update({"data_dir": str(out), "seed": seed, "logging_policy": policy, "preset": preset})
    return summary


def _prepare(out: Path, force: bool) -> None:
    output_dir(out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out} is not empty; refusing to overwrite", hint="pass --force to replace it")
        for name in logs.OUTPUTS:  # remove only what generate itself writes
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
