"""The offline noise floor and verdicts (stats/noise.py), on numbers worked by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from cambrian.stats.noise import Score, judge, noise_floor

SETTINGS = SimpleNamespace(z=2.0, min_floor=0.0, confirm_seeds=2)
BASE = Score(mean=0.627, std=0.095, n=3)  # the quickstart's baseline: 3 seeds of a 1-epoch model


def test_floor_is_z_standard_errors_of_the_difference():
    one = 2.0 * math.sqrt(0.095**2 / 3 + 0.095**2 / 1)
    assert noise_floor(BASE, None, 1, SETTINGS) == pytest.approx(one)
    assert noise_floor(BASE, 0.01, 3, SETTINGS) == pytest.approx(2.0 * math.sqrt(0.095**2 / 3 + 0.01**2 / 3))
    assert noise_floor(BASE, None, 1, SimpleNamespace(z=2.0, min_floor=0.5)) == 0.5


def test_one_seed_is_promising_when_its_confirmations_could_make_it_better():
    """Gain 0.212 is below the one-seed floor (0.219) but above the floor after 3 seeds (0.155): before,
    it was judged "indistinguishable" and the confirmation seeds that would settle it never ran."""
    j = judge("val_loss", Score(0.415), BASE, True, SETTINGS)
    assert j.verdict == "promising"
    assert j.floor == pytest.approx(2.0 * math.sqrt(0.095**2 / 3 + 0.095**2 / 3))
    assert j.gain == pytest.approx(0.212)
    # a gain below that bar is not worth the seeds
    assert judge("val_loss", Score(0.48), BASE, True, SETTINGS).verdict == "not_better"
    # one seed is never "better" on its own, however large the gain
    assert judge("val_loss", Score(0.1), BASE, True, SETTINGS).verdict == "promising"


def test_confirmed_seeds_decide_with_their_own_spread():
    agree = Score(mean=0.415, std=0.002, n=3)
    assert judge("val_loss", agree, BASE, True, SETTINGS).verdict == "better"
    disagree = Score(mean=0.52, std=0.15, n=3)  # the first seed was lucky: gain 0.107 < floor 0.204
    assert judge("val_loss", disagree, BASE, True, SETTINGS).verdict == "not_better"
    # maximised metrics: the same rule with the sign turned
    assert judge("auc", Score(0.70, 0.002, 3), Score(0.60, 0.01, 3), False, SETTINGS).verdict == "better"
    assert judge("auc", Score(0.50, 0.002, 3), Score(0.60, 0.01, 3), False, SETTINGS).verdict == "not_better"
