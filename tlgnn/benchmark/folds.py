"""Grouped k-fold assignment and nested learning-curve subsamples, identical for every model of an experiment.

Folds are drawn over *all* rows (so auxiliary and low-fidelity rows of the test groups are held out too),
grouped (all rows of a group — polymorphs of one reduced formula, or one host alloy — share a fold) and balanced
on the number of scarce labels: groups are shuffled with the seed, then each is placed, largest scarce count
first, in the fold with the fewest scarce labels so far (ties: fewest rows, then lowest index); groups without
a scarce label then go to the fold with the fewest rows.
"""

from __future__ import annotations

import numpy as np


def grouped_folds(groups: np.ndarray, weight: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index [n] for every row.

    Args:
        groups: group label per row (any hashable values).
        weight: per-row weight to balance across folds (1 for rows with the scarce label, else 0).
        n_folds: number of folds.
        seed: shuffle seed.
    """
    groups = np.asarray(groups)
    weight = np.asarray(weight, dtype=np.float64)
    if groups.shape != weight.shape:
        raise ValueError(f"groups {groups.shape} and weight {weight.shape} differ in shape")
    unique, inverse = np.unique(groups, return_inverse=True)
    if unique.size < n_folds:
        raise ValueError(f"only {unique.size} groups for {n_folds} folds")
    group_weight = np.bincount(inverse, weights=weight, minlength=unique.size)
    group_size = np.bincount(inverse, minlength=unique.size)
    rng = np.random.default_rng(seed)
    order = rng.permutation(unique.size)
    order = order[np.argsort(-group_weight[order], kind="stable")]
    fold_weight = np.zeros(n_folds)
    fold_size = np.zeros(n_folds)
    group_fold = np.empty(unique.size, dtype=np.int64)
    for g in order:
        if group_weight[g] > 0:
            best = np.lexsort((np.arange(n_folds), fold_size, fold_weight))[0]
        else:  # rows without the scarce label: balance the row count
            best = np.lexsort((np.arange(n_folds), fold_weight, fold_size))[0]
        group_fold[g] = best
        fold_weight[best] += group_weight[g]
        fold_size[best] += group_size[g]
    return group_fold[inverse]


def learning_curve_order(candidates: np.ndarray, fold: int, seed: int) -> np.ndarray:
    """A seeded permutation of the training rows with the scarce label; the first ``N`` form the size-N subset.

    Subsets are nested (the 50 rows are among the 100 rows) so learning curves are not confounded by resampling.
    """
    rng = np.random.default_rng([seed, fold, 7919])
    return np.asarray(candidates)[rng.permutation(len(candidates))]


__all__ = ["grouped_folds", "learning_curve_order"]
