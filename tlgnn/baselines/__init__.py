"""Classical baselines for the transfer benchmark: composition features, random forests, the affine map."""

from tlgnn.baselines.affine import AffineLogit, AffineMap
from tlgnn.baselines.composition import element_table, feature_names, featurize
from tlgnn.baselines.forest import DifferenceForest, ForestConfig, fit_classifier, fit_regressor

__all__ = [
    "AffineLogit",
    "AffineMap",
    "DifferenceForest",
    "ForestConfig",
    "element_table",
    "feature_names",
    "featurize",
    "fit_classifier",
    "fit_regressor",
]
