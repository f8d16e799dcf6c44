"""The model contract of the benchmark: one function per model kind, ``run(cell: CellInput) -> CellOutput``.

A *cell* is one (experiment, model, fold, training size, seed). The runner owns the folds, the learning-curve
subsample and the scoring, so every model sees identical splits; a model only turns a :class:`CellInput` into
predictions for the test rows.

Leakage is prevented by the data handed over, not by trust: ``cell.frame`` is a copy of the experiment table in
which the scarce target is present only on ``cell.train_target_idx``, and every label column is blank on the
test rows — except the low-fidelity column in the ``low_fidelity_known`` regime.

Model kinds are looked up in :data:`tlgnn.benchmark.kinds.MODEL_KINDS` (``kind -> "module:function"``, with
the version of each kind's results; re-exported here). GNN kinds
(``gnn_single``, ``gnn_union``, ``gnn_multitask``, ``gnn_difference``, ``gnn_fidelity``, ``gnn_finetune``,
``gnn_elv``) resolve to ``tlgnn.benchmark.gnn:run_gnn_cell``, built on ``tlgnn.training``; its contract:

    def run_gnn_cell(cell: CellInput) -> CellOutput:
        # structures: cell.data_path (raw folder or aligned.parquet) + cell.frame["id"]
        # train on cell.train_idx (target only where present in cell.frame, i.e. train_target_idx);
        # carve validation from the training groups (cell.groups) with cell.seed;
        # predict cell.test_idx; regression -> physical units [n_test]; classification -> probabilities [n_test, C]
        ...
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tlgnn.benchmark.config import ExperimentConfig, ModelEntry, TrainSize
from tlgnn.benchmark.kinds import MODEL_KINDS, register_model  # noqa: F401  (re-exported: their old home)

@dataclass
class CellInput:
    """Everything a model needs for one cell.

    Attributes:
        experiment: the experiment config (target, kind, classes, low, auxiliary columns).
        model: the model entry; ``model.options`` already include the ``--quick`` overrides.
        frame: the experiment table with labels masked as described in the module docstring; positional
            row indices below refer to it (``frame.iloc``).
        train_idx: rows of the training folds the model may learn from (all labels present there, except the
            target outside ``train_target_idx``).
        train_target_idx: training rows whose scarce label is given (``len == train size``).
        test_idx: rows to predict (test fold, scarce label present in the original table).
        groups: CV group per row (for a grouped validation split inside the model).
        fold, train_size, seed: the cell's coordinates; ``seed`` also seeds the model.
        quick: ``--quick`` mode (models may shorten training).
        data_path: the table that was read (raw dataset folder or aligned parquet), e.g. to load structures.
        work_dir: a scratch folder for this cell (checkpoints, logs); removed by nobody.
        shared: per-experiment memo for expensive artefacts reused across cells (features, a low-fidelity
            model per fold); keys must encode everything the value depends on.
        accelerator: where trained models run (``cpu`` or ``gpu``; the forests ignore it).
    """

    experiment: ExperimentConfig
    model: ModelEntry
    frame: pd.DataFrame
    train_idx: np.ndarray
    train_target_idx: np.ndarray
    test_idx: np.ndarray
    groups: np.ndarray
    fold: int
    train_size: TrainSize
    seed: int
    quick: bool
    data_path: str
    work_dir: Path
    shared: dict[str, Any] = field(default_factory=dict)
    accelerator: str = "cpu"

    @property
    def regime(self) -> str:
        return self.model.regime

    def target_values(self, rows: np.ndarray) -> np.ndarray:
        """The (visible) scarce labels of ``rows`` as float64."""
        return self.frame[self.experiment.target].to_numpy(dtype=np.float64)[rows]

    def low_values(self, rows: np.ndarray) -> np.ndarray:
        """The (visible) low-fidelity labels of ``rows`` as float64 (NaN where hidden or absent)."""
        if self.experiment.low is None:
            raise ValueError(f"experiment {self.experiment.name!r} declares no low-fidelity column")
        return self.frame[self.experiment.low].to_numpy(dtype=np.float64)[rows]


@dataclass
class CellOutput:
    """A model's answer for one cell.

    Attributes:
        y_pred: regression: predictions [n_test] in the target's unit; classification: class probabilities
            [n_test, n_classes] in the order of ``experiment.classes``.
        columns: extra per-test-row arrays written to the predictions CSV (e.g. ``low_pred``; a
            ``low_pred`` column also enables the "correction" metric ``(high − low)``).
        info: JSON-able details stored in the cell JSON (epochs run, features used, ...).
    """

    y_pred: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


ModelFn = Callable[[CellInput], CellOutput]


def resolve_model(kind: str) -> ModelFn:
    """The ``run`` function of a model kind; a clear error for unknown kinds or missing implementations."""
    if kind not in MODEL_KINDS:
        raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    module_name, function = MODEL_KINDS[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise ImportError(
                f"model kind {kind!r} is implemented by {module_name}.{function}, which is not available "
                f"in this checkout"
            ) from err
        raise
    return getattr(module, function)


__all__ = ["CellInput", "CellOutput", "MODEL_KINDS", "ModelFn", "register_model", "resolve_model"]
