"""Composition features in torch, from atom counts per element: the context a head can append to the graph embedding.

The features are those of :func:`tlgnn.baselines.composition.featurize` (same order, same definitions:
``n_elements``, Lp norms of the atomic fractions, then for every elemental property the fraction-weighted
``mean`` and ``mad``, ``min``, ``max``, ``range`` over the elements present and the ``mode``, the property of the
most abundant element with ties going to the lowest Z), computed from counts ``[B, 119]`` (column = Z) instead of
formula strings, vectorised over the batch and differentiable-free (they are inputs, not parameters).

The element property table is copied from :func:`tlgnn.baselines.composition.element_table` when the module is
built and kept as a persistent buffer, so a checkpoint carries the exact values its head was trained with.
:meth:`CompositionFeatures.standardized` rescales the features to order-one inputs for MLPs with fixed
constants derived from the same table (also buffers): for each property with mean ``mu`` and standard
deviation ``sigma`` over the elements Z = 1..103, ``mean``/``min``/``max``/``mode`` become ``(x - mu) / sigma``
and ``mad``/``range`` become ``x / sigma``; ``n_elements`` becomes ``(n - 3) / 2`` and the Lp norms
``(x - 0.5) / 0.25``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlgnn.baselines.composition import NORMS, STATISTICS, element_table, feature_names

#: Columns of an element-count matrix: index = atomic number Z (column 0 unused), Z up to 118.
NUM_ELEMENT_COLUMNS = 119

#: Fixed scaling of the stoichiometric features in :meth:`CompositionFeatures.standardized`: (centre, scale).
COUNT_SCALE = (3.0, 2.0)
NORM_SCALE = (0.5, 0.25)


def element_counts(z: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Atom counts per element of every graph: float32 ``[num_graphs, 119]``, column = Z.

    ``z`` (long [N]) are the atomic numbers of all nodes and ``batch`` (long [N]) the graph each belongs to (PyG's
    ``batch.batch``). Deterministic on every device (integer counts accumulated in float32 are exact).
    """
    counts = torch.zeros(int(num_graphs), NUM_ELEMENT_COLUMNS, dtype=torch.float32, device=z.device)
    if z.numel():
        ones = torch.ones(z.shape[0], dtype=torch.float32, device=z.device)
        counts.index_put_((batch.long(), z.long()), ones, accumulate=True)
    return counts


def counts_of(batch: Any) -> torch.Tensor:
    """Element counts ``[B, 119]`` of a batch: its ``element_counts`` (a cached-embedding batch) if it has them,
    else counted from a graph batch's ``z``/``batch``/``num_graphs``."""
    counts = getattr(batch, "element_counts", None)
    if counts is not None:
        return counts.float()
    z = getattr(batch, "z", None)
    if z is None:
        raise ValueError("composition context needs the batch's element_counts or its atoms (z, batch); "
                         f"{type(batch).__name__} has neither")
    index = getattr(batch, "batch", None)
    if index is None:  # a single graph, not a PyG Batch
        index = torch.zeros_like(z)
    return element_counts(z, index, int(getattr(batch, "num_graphs", 1)))


def _table() -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [119, P] float32, has_data [119] bool)``: the element table indexed by Z; rows without data are 0."""
    table = element_table()
    values = torch.zeros(NUM_ELEMENT_COLUMNS, table.values.shape[1], dtype=torch.float64)
    values[1 : table.values.shape[0] + 1] = torch.from_numpy(table.values)
    has_data = torch.zeros(NUM_ELEMENT_COLUMNS, dtype=torch.bool)
    has_data[1 : table.values.shape[0] + 1] = True
    return values, has_data


class CompositionFeatures(nn.Module):
    """``forward(counts [B, 119]) -> [B, F]``: :func:`~tlgnn.baselines.composition.featurize`'s features in torch.

    ``F = len(feature_names())`` (= ``self.dim``); ``names`` lists them. Counts may be any non-negative amounts
    (atoms per cell, per formula unit, fractions): only their ratios matter, except that ties for the ``mode`` are
    exact ties. A row with no atoms or with an element the table lacks (Z = 0 or Z > 103) is a ``ValueError`` on
    the CPU; on an accelerator it is an asynchronous assertion (a host check would stall the device).
    """

    def __init__(self) -> None:
        super().__init__()
        values, has_data = _table()
        self.names = feature_names()
        self.dim = len(self.names)
        self.register_buffer("element_values", values.float())
        self.register_buffer("has_data", has_data)
        mu = values[has_data].mean(0)
        sigma = values[has_data].std(0).clamp_min(1e-12)
        stat_centre = {"mean": mu, "mad": torch.zeros_like(mu), "min": mu, "max": mu, "range": torch.zeros_like(mu),
                       "mode": mu}
        centre = torch.stack([stat_centre[s] for s in STATISTICS], 1).reshape(-1)  # property-major, as featurize
        scale = sigma.repeat_interleave(len(STATISTICS))
        stoich_centre = torch.tensor([COUNT_SCALE[0], *[NORM_SCALE[0]] * len(NORMS)], dtype=torch.float64)
        stoich_scale = torch.tensor([COUNT_SCALE[1], *[NORM_SCALE[1]] * len(NORMS)], dtype=torch.float64)
        self.register_buffer("feature_centre", torch.cat([stoich_centre, centre]).float())
        self.register_buffer("feature_scale", torch.cat([stoich_scale, scale]).float())

    def check(self, counts: torch.Tensor) -> None:
        """Raise ``ValueError`` for counts that have no features (wrong width, negative, no atoms, an element
        without data); on an accelerator only the data-free checks run, asynchronously."""
        if counts.dim() != 2 or counts.shape[1] != NUM_ELEMENT_COLUMNS:
            raise ValueError(f"element counts must be [B, {NUM_ELEMENT_COLUMNS}] (column = Z), got "
                             f"{tuple(counts.shape)}")
        bad = ((counts > 0) & ~self.has_data).any(1) | (counts < 0).any(1) | ~(counts > 0).any(1)
        if counts.device.type != "cpu":
            torch._assert_async(~bad.any())
        elif bad.any():
            row = int(bad.nonzero()[0, 0])
            present = [int(z) for z in (counts[row] != 0).nonzero()[:, 0]]
            raise ValueError(f"element counts row {row}: no composition features for elements Z={present} "
                             f"(needs at least one atom, counts >= 0, Z in 1..{int(self.has_data.nonzero().max())})")

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        """Composition features [B, F] (float32, units of :mod:`tlgnn.baselines.composition`)."""
        self.check(counts)
        counts = counts.float()
        present = counts > 0
        w = counts / counts.sum(1, keepdim=True)  # atomic fractions [B, 119]
        values = self.element_values.unsqueeze(0)  # [1, 119, P]; elementwise products: no autocast to half
        mean = (w.unsqueeze(2) * values).sum(1)
        mad = (w.unsqueeze(2) * (values - mean.unsqueeze(1)).abs()).sum(1)
        mask = present.unsqueeze(2)
        low = torch.where(mask, values, torch.full_like(values, float("inf"))).amin(1)
        high = torch.where(mask, values, torch.full_like(values, float("-inf"))).amax(1)
        mode = self.element_values[counts.argmax(1)]  # first maximum = lowest Z on ties
        stats = torch.stack([mean, mad, low, high, high - low, mode], 2)  # [B, P, S], order of STATISTICS
        norms = [w.pow(p).sum(1).pow(1.0 / p) for p in NORMS]
        stoich = torch.stack([present.sum(1).float(), *norms], 1)
        return torch.cat([stoich, stats.reshape(stats.shape[0], -1)], 1)

    def standardized(self, counts: torch.Tensor) -> torch.Tensor:
        """``(forward(counts) - centre) / scale`` with the fixed constants of the module docstring: [B, F]."""
        return (self.forward(counts) - self.feature_centre) / self.feature_scale


__all__ = ["NUM_ELEMENT_COLUMNS", "CompositionFeatures", "counts_of", "element_counts"]
