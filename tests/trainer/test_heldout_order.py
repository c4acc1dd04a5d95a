"""The held-out rows the predictor scores carry nothing of the log's order: the predictor runs candidate code over
all of them at once, and in log order a user's rows come slate by slate, so a model could read each row's slate
position from its place in the batch. Positions are clicked differently (the world's position effect), so such a
model scores better than it ranks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import prepare
from cambrian.trainer.metrics import auc

SLATE = 6  # the world's slate size (world/params.py)


def position_from_order(user: np.ndarray) -> np.ndarray:
    """What a batch-reading model can compute: each row's place in its run of one user's rows, modulo the slate."""
    index = np.arange(len(user))
    start = np.r_[True, user[1:] != user[:-1]]
    return (index - np.maximum.accumulate(np.where(start, index, 0))) % SLATE


def test_the_held_out_rows_give_no_slate_position_away(world_dir):
    data = prepare(world_dir, ModelConfig(), None)
    user = np.asarray(data.val.features["user"])
    assert (np.diff(user) >= 0).all()  # by user, then item: an order the labels do not set
    guess = auc(-position_from_order(user).astype(float), data.val.label)
    # the same guess on the held-out day in the log's order reads the position effect
    log = pd.read_parquet(world_dir / "impressions.parquet", columns=["day", "user_id", "click"])
    last = log[log["day"] == log["day"].max()]
    in_log_order = auc(-position_from_order(last["user_id"].to_numpy()).astype(float), last["click"].to_numpy())
    assert in_log_order > 0.58, in_log_order
    assert abs(guess - 0.5) < 0.03, guess
