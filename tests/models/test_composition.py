"""Composition features in torch (``tlgnn.models.composition``) equal the baselines' ``featurize`` on real crystals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Composition
from torch_geometric.data import Batch

from support.mp import sample_150
from tlgnn.baselines.composition import element_table, feature_names, featurize
from tlgnn.graphs import CrystalGraphBuilder
from tlgnn.models.composition import NUM_ELEMENT_COLUMNS, CompositionFeatures, counts_of, element_counts

FORMULAS = ["NaCl", "Fe2O3", "SrTiO3", "Li7La3Zr2O12", "CoNi", "GaAs", "Si", "Cs3Bi2I9", "K2PtCl6", "UO2"]


def _tolerance(features: np.ndarray) -> np.ndarray:
    """rtol 1e-5 plus the float32 rounding of the element values that mad/range subtract (cancellation)."""
    table = np.abs(element_table().values).max(0)  # per property
    per_property = np.repeat(table, 6)
    scale = np.concatenate([np.ones(6), per_property])
    return 1e-5 * np.abs(features) + 4 * np.finfo(np.float32).eps * scale


def _counts(formulas: list[str]) -> torch.Tensor:
    counts = torch.zeros(len(formulas), NUM_ELEMENT_COLUMNS)
    for i, formula in enumerate(formulas):
        for element, amount in Composition(formula).items():
            counts[i, element.Z] = float(amount)
    return counts


@pytest.fixture(scope="module")
def batch_150() -> tuple[Batch, list[str]]:
    _, structures = sample_150()
    graphs = [g.to_data() for g in CrystalGraphBuilder(cutoff=8.0, max_neighbors=12).build_many(list(structures))]
    return Batch.from_data_list(graphs), [s.composition.formula for s in structures]


def test_features_of_150_mp_graphs_equal_featurize(batch_150):
    batch, formulas = batch_150
    got = CompositionFeatures()(counts_of(batch)).double().numpy()
    expected = featurize(formulas)
    assert got.shape == expected.shape == (150, len(feature_names()))
    assert (np.abs(got - expected) <= _tolerance(expected)).all()
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_counts_given_directly_equal_featurize_and_only_their_ratio_matters():
    features = CompositionFeatures()
    counts = _counts(FORMULAS)
    expected = featurize(FORMULAS)
    got = features(counts).double().numpy()
    assert (np.abs(got - expected) <= _tolerance(expected)).all()
    assert torch.allclose(features(3 * counts), features(counts), rtol=1e-6, atol=1e-5)


def test_mode_is_the_most_abundant_element_ties_to_the_lowest_z():
    features = CompositionFeatures()
    names = feature_names()
    z_mode = names.index("Z_mode")
    got = features(_counts(["NaCl", "ClNa2", "CoNi", "Fe2O3"]))[:, z_mode].tolist()
    assert got == [11.0, 11.0, 27.0, 8.0]


def test_element_counts_from_a_graph_batch_and_a_cached_batch(batch_150):
    batch, formulas = batch_150
    counts = element_counts(batch.z, batch.batch, batch.num_graphs)
    assert counts.shape == (150, 119) and counts.dtype == torch.float32
    for i in (0, 17, 149):
        amounts = {e.Z: a for e, a in sample_150()[1][i].composition.items()}
        assert {int(z): float(counts[i, z]) for z in counts[i].nonzero()[:, 0]} == amounts

    class Cached:  # a cached-embedding batch carries its counts, no atoms
        element_counts = counts[:4].double()

    assert torch.equal(counts_of(Cached()), counts[:4])


def test_table_and_scales_are_persistent_buffers():
    features = CompositionFeatures()
    state = features.state_dict()
    assert {"element_values", "has_data", "feature_centre", "feature_scale"} <= set(state)
    assert state["element_values"].shape == (119, element_table().values.shape[1])
    other = CompositionFeatures()
    with torch.no_grad():
        other.element_values.zero_()
    other.load_state_dict(state)
    counts = _counts(FORMULAS)
    assert torch.equal(other(counts), features(counts))


def test_standardized_features_are_order_one(batch_150):
    batch, _ = batch_150
    scaled = CompositionFeatures().standardized(counts_of(batch))
    assert torch.isfinite(scaled).all()
    assert scaled.abs().mean() < 1.5 and scaled.abs().max() < 10


def test_counts_without_features_are_errors():
    features = CompositionFeatures()
    counts = _counts(["NaCl", "NaCl"])
    counts[1, 110] = 1.0
    with pytest.raises(ValueError, match=r"row 1: .*Z=\[11, 17, 110\]"):
        features(counts)
    with pytest.raises(ValueError, match="row 0"):
        features(torch.zeros(1, 119))
    with pytest.raises(ValueError, match=r"\[B, 119\]"):
        features(torch.ones(2, 100))
