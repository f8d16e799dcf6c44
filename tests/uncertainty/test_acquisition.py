"""Acquisition scores and ranking: which crystal to compute next."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tlgnn.uncertainty import ACQUISITIONS, DESCRIPTIONS, acquisition_scores, rank

MEAN = np.array([1.0, 1.2, 0.5, 1.1])
STD = np.array([0.1, 0.05, 0.1, 0.5])


def test_every_kind_has_a_description():
    assert set(DESCRIPTIONS) == set(ACQUISITIONS)


def test_mean_and_minimize():
    assert rank(acquisition_scores(MEAN, STD, "mean"))[0] == 1
    assert rank(acquisition_scores(MEAN, STD, "mean", minimize=True))[0] == 2


def test_ucb_prefers_a_high_std_over_a_slightly_higher_mean():
    scores = acquisition_scores(MEAN, STD, "ucb", kappa=2.0)
    np.testing.assert_allclose(scores, MEAN + 2 * STD)
    assert rank(scores)[0] == 3  # 1.1 + 1.0 beats 1.2 + 0.1
    assert rank(acquisition_scores(MEAN, STD, "ucb", kappa=0.0))[0] == 1
    low = acquisition_scores(MEAN, STD, "ucb", kappa=2.0, minimize=True)
    np.testing.assert_allclose(low, -(MEAN - 2 * STD))
    assert rank(low)[0] == 3  # lower bound 0.1 beats the mean 0.5 (lower bound 0.3)


def test_exceed_matches_the_normal_survival_function():
    got = acquisition_scores(MEAN, STD, "exceed", threshold=1.15)
    np.testing.assert_allclose(got, stats.norm.sf(1.15, loc=MEAN, scale=STD))
    low = acquisition_scores(MEAN, STD, "exceed", threshold=1.15, minimize=True)
    np.testing.assert_allclose(low, stats.norm.cdf(1.15, loc=MEAN, scale=STD))
    step = acquisition_scores([1.0, 2.0, 1.5], [0.0, 0.0, 0.0], "exceed", threshold=1.5)
    np.testing.assert_array_equal(step, [0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="threshold"):
        acquisition_scores(MEAN, STD, "exceed")


def test_std_and_random():
    np.testing.assert_array_equal(acquisition_scores(MEAN, STD, "std"), STD)
    a = acquisition_scores(MEAN, STD, "random", seed=3)
    np.testing.assert_array_equal(a, acquisition_scores(MEAN, STD, "random", seed=3))
    assert a.shape == (4,) and np.all((a >= 0) & (a < 1))
    assert not np.array_equal(a, acquisition_scores(MEAN, STD, "random", seed=4))


def test_unknown_kind_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown acquisition 'ubc'.*did you mean 'ucb'"):
        acquisition_scores(MEAN, STD, "ubc")
    with pytest.raises(ValueError, match="choose from mean, ucb, exceed, std, random"):
        acquisition_scores(MEAN, STD, "zzz")


def test_rank_is_stable_descending_with_nan_last():
    scores = np.array([1.0, np.nan, 3.0, 1.0, 3.0, -np.inf, np.nan, 1.0])
    np.testing.assert_array_equal(rank(scores), [2, 4, 0, 3, 7, 5, 1, 6])
    assert rank([]).size == 0
