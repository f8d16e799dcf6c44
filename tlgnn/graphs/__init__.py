"""tlgnn.graphs: crystal graphs (vesin neighbour lists), CGCNN elemental features, radial basis, graph cache.

Contract: docs/architecture.md; conventions and benchmarks: docs/graphs.md.
"""

from tlgnn.graphs.builder import (
    GRAPH_FORMAT_VERSION,
    CrystalGraphBuilder,
    GraphArrays,
    IsolatedAtomError,
)
from tlgnn.graphs.cache import GraphCache, GraphCacheWarning, structure_key
from tlgnn.graphs.expansion import GaussianExpansion
from tlgnn.graphs.features import ATOM_FEATURES, NUM_FEATURES, build_atom_feature_table
from tlgnn.graphs.packs import CorruptPackError, GraphStore

__all__ = [
    "ATOM_FEATURES",
    "GRAPH_FORMAT_VERSION",
    "NUM_FEATURES",
    "CorruptPackError",
    "CrystalGraphBuilder",
    "GraphCache",
    "GraphCacheWarning",
    "GraphStore",
    "GaussianExpansion",
    "GraphArrays",
    "IsolatedAtomError",
    "build_atom_feature_table",
    "structure_key",
]
