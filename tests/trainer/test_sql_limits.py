"""Reward SQL is an agent's (a label or proxy a declaration's), and the gate's parse check accepts any scalar
function of the row: the trusted side's limits (cambrian/sqllimits.py, from its environment only) are what stop an
expression that runs for hours or grows past the memory, and the reward then fails the gate with its reason."""

import time

import numpy as np
import pandas as pd
import pytest

from cambrian.errors import GateError
from cambrian.trainer.config import RewardConfig
from cambrian.trainer.data import check_reward_sql, reward_columns, reward_labels
from cambrian.trainer.schema import WORLD

# about 2.4 s of CPU a row in a few KiB; 800 MB a row
SLOW = "1 + 0 * levenshtein(repeat('a', CAST(click AS BIGINT) * 20000), repeat('b', CAST(click AS BIGINT) * 20000))"
BIG = "1 + 0 * length(repeat('xxxxxxxx', CAST(click AS BIGINT) * 100000000))"


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({c: np.ones(n) for c in reward_columns(WORLD)})


def test_a_slow_reward_is_stopped_at_its_time_limit_and_fails_the_gate(monkeypatch):
    monkeypatch.setenv("CAMBRIAN_SQL_SECONDS", "1")
    monkeypatch.setenv("CAMBRIAN_SQL_ROW_SECONDS", "0")
    check_reward_sql(SLOW, "weight", WORLD)  # the parse check lets it through: the limit is what stops it
    started = time.monotonic()
    with pytest.raises(GateError, match=r"^validation gate failed at reward_sql: reward SQL ran past its time "
                                        r"limit of 1 s on 8 rows$") as info:
        reward_labels(_rows(8), RewardConfig(label="click", weight=SLOW), WORLD)
    assert info.value.stage == "reward_sql"
    assert time.monotonic() - started < 15  # not the 19 s its 8 rows take


def test_a_reward_that_grows_past_the_memory_limit_fails_the_gate(monkeypatch):
    monkeypatch.setenv("CAMBRIAN_SQL_MEMORY_MB", "512")
    check_reward_sql(BIG, "weight", WORLD)
    with pytest.raises(GateError, match=r"^validation gate failed at reward_sql: reward SQL ran past its memory "
                                        r"limit of 512 MiB") as info:
        reward_labels(_rows(1), RewardConfig(label="click", weight=BIG), WORLD)
    assert info.value.stage == "reward_sql"


def test_a_warm_slot_takes_a_child_started_ahead_and_never_reuses_one(monkeypatch):
    """A warm slot keeps one started, never-used SQL child (its imports, about 1 s, paid while the slot works): each
    pass takes it and another is started; a child never evaluates for two passes, and one started under other
    limits is discarded, not used."""
    from cambrian.trainer import sqlworker

    monkeypatch.setattr(sqlworker, "_spare", None)
    monkeypatch.setattr(sqlworker, "_keep_spare", False)
    sqlworker.keep_a_spare()
    used = []
    for _ in range(2):
        spare = sqlworker._spare.proc
        w = sqlworker.SqlWorker()
        assert w._proc is spare and sqlworker._spare.proc is not spare  # the one started ahead; a new one behind it
        assert w.evaluate(pd.DataFrame({"click": [1, 0]}), {"y": "click * 2"})["y"].tolist() == [2.0, 0.0]
        used.append(w._proc)
        w.close()
    assert used[0].pid != used[1].pid and all(p.poll() is not None for p in used)
    stale = sqlworker._spare.proc
    monkeypatch.setenv("CAMBRIAN_SQL_THREADS", "2")  # other limits: the spare is not theirs
    w = sqlworker.SqlWorker()
    assert w._proc is not stale and stale.wait(10) is not None and w.limits.threads == 2
    w.close()
    sqlworker._take("")  # leave no spare behind

