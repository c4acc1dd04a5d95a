"""The multi-fidelity benchmark's paired figures (bench/multifidelity.py compare), without training."""

from __future__ import annotations

import pytest

from cambrian.bench.multifidelity import compare


def cand(value, full_seconds, verdict="not_better", decision=None, look=0.0, runs=1):
    return {"value": value, "full_seconds": full_seconds, "verdict": verdict, "decision": decision,
            "look_seconds": look, "full_runs": runs}


def test_savings_and_discarded_winners_are_counted_per_paired_candidate():
    full = {"a": cand(0.30, 20, "better", runs=2), "b": cand(0.10, 10), "c": cand(0.25, 20, "better", runs=2)}
    fid = {"a": cand(0.30, 20, "better", "promoted", 3, runs=2), "b": cand(None, 0, "not_better", "stopped", 3, runs=0),
           "c": cand(None, 0, "not_better", "stopped", 3, runs=0)}
    c = compare(full, fid)
    assert c["full_seconds"] == {"full": 50, "fidelity": 20} and c["full_runs"] == {"full": 5, "fidelity": 2}
    assert c["stopped"] == 2 and c["candidate_look_seconds"] == 9
    assert c["better_in_full"] == 2 and c["better_discarded"] == 1  # c was better and got stopped
    assert not c["winner_discarded"] and c["same_winner"] and c["final_best"] == {"full": 0.30, "fidelity": 0.30}
    fid["a"] = cand(None, 0, "not_better", "stopped", 3, runs=0)
    c = compare(full, fid)
    assert c["winner_discarded"] and c["final_best"]["fidelity"] is None and not c["same_winner"]


def test_unpaired_arms_are_refused():
    with pytest.raises(RuntimeError, match="different candidates"):
        compare({"a": cand(0.1, 1)}, {"b": cand(0.1, 1)})
