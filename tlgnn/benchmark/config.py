"""Benchmark experiment configs (``configs/benchmarks/<experiment>.yaml``), validated dataclasses.

Example::

    name: hse
    description: HSE06 gap (scarce) with dense PBE gaps as the low fidelity
    data:
      path: ../shared/data/mp_multifidelity_bandgap   # relative to the repo root; --data overrides
      formula_column: formula_sum
      group_by: reduced_formula
    target: gap_hse
    kind: regression
    low: band_gap_pbe
    auxiliary: [gap_gllbsc, gap_scan]       # further label columns GNN multi-task models may train on
    folds: {n_folds: 5, seed: 0}
    train_sizes: [50, 100, 200, 400, all]
    seeds: [0]
    models:
      - {name: rf_single, kind: rf_single}
      - {name: rf_difference_lowknown, kind: rf_difference, regime: low_fidelity_known}
    quick: {folds: [0, 1], train_sizes: [100, all], options: {n_estimators: 100}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tlgnn.benchmark.kinds import MODEL_KINDS
from tlgnn.utils.config import ConfigError, from_dict, load_yaml

Regime = Literal["structure_only", "low_fidelity_known"]
TrainSize = int | Literal["all"]


@dataclass
class BenchmarkData:
    """Where the experiment table comes from and how rows are grouped for cross-validation.

    Attributes:
        path: the raw dataset folder (with ``labels.csv.gz``), an ``aligned.parquet`` or the folder holding one;
            relative paths are resolved against the repository root.
        id_column: row identifier (``material_id``; ``id`` for TinNet).
        formula_column: chemical formula used for composition features (derived from the structure for an
            aligned table without it).
        group_by: ``reduced_formula`` (polymorphs share a fold) or the name of a column (e.g. ``elements``).
        max_low_only_rows: keep at most this many training rows that have no scarce label of any kind
            (a seeded subsample of the dense low-fidelity-only rows; ``None`` = all). Applies to every model.
        aligned_columns: column renames applied when the table is an ``aligned.parquet`` (whose columns are
            task names of the source YAML): ``{name used by this experiment: task name in the aligned table}``,
            e.g. ``{band_gap_pbe: gap_pbe_mp, expt_gap: gap_exp}``.
    """

    path: str
    id_column: str = "material_id"
    formula_column: str = "formula_sum"
    group_by: str = "reduced_formula"
    max_low_only_rows: int | None = None
    aligned_columns: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.max_low_only_rows is not None and self.max_low_only_rows < 0:
            raise ConfigError("max_low_only_rows", f"must be >= 0 or null, got {self.max_low_only_rows}")


@dataclass
class FoldConfig:
    """Grouped k-fold cross-validation (folds balanced on the number of scarce labels).

    Attributes:
        n_folds: number of folds.
        seed: seed of the group shuffle; the same seed and table give the same folds.
    """

    n_folds: int = 5
    seed: int = 0

    def validate(self) -> None:
        if self.n_folds < 2:
            raise ConfigError("n_folds", f"must be >= 2, got {self.n_folds}")


@dataclass
class ModelEntry:
    """One model of an experiment.

    Attributes:
        name: results folder name (unique within the experiment); default: ``kind`` plus ``_lowknown`` in the
            low-fidelity-known regime.
        kind: a key of :data:`tlgnn.benchmark.kinds.MODEL_KINDS` (``rf_single``, ``rf_difference``, ``affine``,
            ``gnn_*``).
        regime: ``structure_only`` (the model never sees the test crystal's labels) or ``low_fidelity_known``
            (the test crystal's low-fidelity label is given).
        options: model options (e.g. ``n_estimators`` for forests, trainer settings for GNNs).
    """

    kind: str
    name: str | None = None
    regime: Regime = "structure_only"
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.name is None:
            self.name = self.kind + ("_lowknown" if self.regime == "low_fidelity_known" else "")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError("name", f"must be a plain folder name, got {self.name!r}")


@dataclass
class QuickConfig:
    """What ``--quick`` runs: a subset of folds and training sizes, with option overrides (fewer trees/epochs).

    Attributes:
        folds: test folds to run.
        train_sizes: training sizes to run.
        seeds: seeds to run.
        options: merged into every model's options.
    """

    folds: list[int] = field(default_factory=lambda: [0, 1])
    train_sizes: list[TrainSize] = field(default_factory=lambda: [100, "all"])
    seeds: list[int] = field(default_factory=lambda: [0])
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    """One benchmark experiment: a scarce target scored by grouped k-fold CV with a learning curve.

    Attributes:
        name: experiment name (results folder).
        target: the scarce task column, the only one scored.
        kind: ``regression`` or ``classification`` (integer class labels in ``target``).
        classes: class labels in index order (classification).
        low: the dense low-fidelity column (``None`` when the experiment has none).
        auxiliary: further label columns that transfer models may train on (never scored).
        description: one line for the report.
        data: the table and grouping.
        folds: cross-validation settings.
        train_sizes: numbers of scarce training labels (``all`` = every scarce label of the training folds).
        seeds: seeds (learning-curve subsample and model seed).
        models: the models.
        quick: the ``--quick`` subset.
    """

    name: str
    target: str
    data: BenchmarkData
    models: list[ModelEntry]
    kind: Literal["regression", "classification"] = "regression"
    classes: list[Any] | None = None
    low: str | None = None
    auxiliary: list[str] = field(default_factory=list)
    description: str = ""
    folds: FoldConfig = field(default_factory=FoldConfig)
    train_sizes: list[TrainSize] = field(default_factory=lambda: ["all"])
    seeds: list[int] = field(default_factory=lambda: [0])
    quick: QuickConfig = field(default_factory=QuickConfig)

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("models", "an experiment needs at least one model")
        names = [m.name for m in self.models]
        duplicate = {n for n in names if names.count(n) > 1}
        if duplicate:
            raise ConfigError("models", f"model names must be unique, repeated: {sorted(duplicate)}")
        if self.kind == "classification" and (not self.classes or len(self.classes) < 2):
            raise ConfigError("classes", "a classification experiment needs at least 2 classes")
        for key, sizes in (("train_sizes", self.train_sizes), ("quick.train_sizes", self.quick.train_sizes)):
            for size in sizes:
                if size != "all" and size < 2:
                    raise ConfigError(key, f"training sizes must be >= 2 or 'all', got {size}")
        for i, fold in enumerate(self.quick.folds):
            if not 0 <= fold < self.folds.n_folds:
                raise ConfigError(f"quick.folds[{i}]", f"must be in [0, {self.folds.n_folds}), got {fold}")
        for i, model in enumerate(self.models):
            if model.regime == "low_fidelity_known" and self.low is None:
                raise ConfigError(f"models[{i}].regime", "low_fidelity_known needs the experiment's 'low' column")
        if self.target == self.low or self.target in self.auxiliary:
            raise ConfigError("target", f"{self.target!r} is also listed as low/auxiliary")


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate one experiment YAML; errors name the file and the dotted key."""
    path = Path(path)
    raw = load_yaml(path)
    try:
        config = from_dict(ExperimentConfig, raw)
    except ConfigError as err:
        raise ConfigError(err.key, err.reason, source=str(path)) from err
    for i, model in enumerate(config.models):
        if model.kind not in MODEL_KINDS:
            raise ConfigError(
                f"models[{i}].kind", f"unknown model kind {model.kind!r}; known: {', '.join(MODEL_KINDS)}", str(path)
            )
    return config


def size_label(size: TrainSize) -> str:
    """``50`` -> ``"50"``, ``"all"`` -> ``"all"`` (used in file names ``fold<k>_n<label>_s<seed>``)."""
    return str(size)


__all__ = [
    "BenchmarkData",
    "ExperimentConfig",
    "FoldConfig",
    "ModelEntry",
    "QuickConfig",
    "Regime",
    "load_experiment",
    "size_label",
]
