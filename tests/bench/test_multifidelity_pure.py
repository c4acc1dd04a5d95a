"""The multi-fidelity benchmark's paired figures (bench/multifidelity.py compare), without training."""

from __future__ import annotations

import pytest

from cambrian.bench.multifidelity import compare


def cand(value, full_seconds, verdict="not_better", decision=None, look=0.0, runs=1, gain=None, floor=None):
    return {"value": value, "full_seconds": full_seconds, "verdict": verdict, "decision": decision,
            "look_seconds": look, "full_runs": runs, "look_gain": gain, "look_floor": floor, "hypothesis": "h"}


def test_savings_and_discarded_winners_are_counted_per_paired_candidate():
    full = {"a": cand(0.30, 20, "better", runs=2), "b": cand(0.10, 10), "c": cand(0.25, 20, "better", runs=2)}
    fid = {"a": cand(0.30, 14, "better", "promoted", 3, runs=2, gain=0.5, floor=1.0),
           "b": cand(None, 0, "not_better", "stopped", 3, runs=0, gain=-2.0, floor=1.0),
           "c": cand(None, 0, "not_better", "stopped", 3, runs=0, gain=-1.5, floor=1.0)}
    c = compare(full, fid)
    # paired: a's full runs cost what they cost in the full arm (20 s), whatever the load was in the other arm
    assert c["full_seconds"] == {"full": 50, "fidelity": 20} and c["measured_full_seconds"]["fidelity"] == 14
    assert c["full_runs"] == {"full": 5, "fidelity": 2}
    assert c["stopped"] == 2 and c["candidate_look_seconds"] == 9
    assert c["better_in_full"] == 2 and c["better_discarded"] == 1  # c was better and got stopped
    assert not c["winner_discarded"] and c["same_winner"] and c["final_best"] == {"full": 0.30, "fidelity": 0.30}
    # other rules replayed on the same first looks: -1 stops b and c, +1 stops all three
    assert c["rules"]["-1.0"]["stopped"] == 2 and c["rules"]["-1.0"]["full_seconds_ratio"] == pytest.approx(0.4)
    assert c["rules"]["-1.0"]["better_discarded"] == 1 and not c["rules"]["-1.0"]["winner_discarded"]
    assert c["rules"]["0.0"]["stopped"] == 2 and c["rules"]["0.5"]["stopped"] == 2
    assert c["rules"]["1.0"]["stopped"] == 3 and c["rules"]["1.0"]["winner_discarded"]
    assert c["rules"]["1.0"]["full_seconds_ratio"] == 0
    fid["a"] = cand(None, 0, "not_better", "stopped", 3, runs=0, gain=-3.0, floor=1.0)
    c = compare(full, fid)
    assert c["winner_discarded"] and c["final_best"]["fidelity"] is None and not c["same_winner"]


def test_unpaired_arms_are_refused():
    with pytest.raises(RuntimeError, match="different candidates"):
        compare({"a": cand(0.1, 1)}, {"b": cand(0.1, 1)})


def test_rank_rules_keep_the_top_of_each_cohort_by_gain_in_floors():
    from cambrian.bench.multifidelity import rank_stopped

    def look(gain, floor, persona):
        return {"look_gain": gain, "look_floor": floor, "persona": persona}
    # in floors: a +3, b +2 (a floor of 0.5 makes 1.0 count double), c -1, d +0.5, e -4
    looks = {"a": look(3.0, 1.0, "p"), "b": look(1.0, 0.5, "q"), "c": look(-1.0, 1.0, "p"),
             "d": look(0.5, 1.0, "q"), "e": look(-4.0, 1.0, "q")}
    assert rank_stopped(looks, 2, False, None) == {"c", "e"}  # top ceil(5/2) = 3: a, b, d
    assert rank_stopped(looks, 3, False, None) == {"c", "d", "e"}  # top 2
    assert rank_stopped(looks, 3, False, 0.0) == {"c", "e"}  # d is kept by the absolute bar
    # per persona: p = {a, c} keeps 1, q = {b, d, e} keeps 2
    assert rank_stopped(looks, 2, True, None) == {"c", "e"}
    assert rank_stopped(looks, 3, True, None) == {"c", "d", "e"}


def test_rank_rules_are_replayed_and_count_discarded_winners():
    full = {"a": cand(0.30, 20, "better", runs=2), "b": cand(0.10, 10), "c": cand(0.25, 20)}
    fid = {"a": cand(0.30, 20, "better", "promoted", 3, runs=2, gain=0.1, floor=1.0),
           "b": cand(0.10, 10, "not_better", "promoted", 3, gain=2.0, floor=1.0),
           "c": cand(0.25, 20, "not_better", "promoted", 3, gain=1.0, floor=1.0)}
    c = compare(full, fid)
    # the winner a looked worst: top 1/2 keeps b and c, top 1/3 keeps b only
    assert c["rank_rules"]["top 1/2"]["stopped"] == 1 and c["rank_rules"]["top 1/2"]["winner_discarded"]
    assert c["rank_rules"]["top 1/2"]["full_seconds_ratio"] == pytest.approx(0.6)
    assert c["rank_rules"]["top 1/3"]["stopped"] == 2 and c["rank_rules"]["top 1/3"]["better_discarded"] == 1
    assert c["rank_rules"]["top 1/2 or >= 0 floors"]["stopped"] == 0


def test_replayed_rules_sum_over_seeds_weighted_by_each_seeds_full_seconds():
    from cambrian.bench.multifidelity import summed

    seeds = [{"full_seconds": {"full": 300}, "rank_rules": {"r": {"stopped": 1, "full_seconds_ratio": 0.5,
                                                                    "better_discarded": 0, "winner_discarded": False}}},
             {"full_seconds": {"full": 100}, "rank_rules": {"r": {"stopped": 2, "full_seconds_ratio": 0.9,
                                                                    "better_discarded": 1, "winner_discarded": True}}}]
    assert summed(seeds, "rank_rules", "r") == {"stopped": 3, "full_seconds_ratio": 0.6, "better_discarded": 1,
                                                "winner_discarded": 1}
