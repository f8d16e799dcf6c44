"""Prediction from a checkpoint alone: structures -> graphs (with the checkpoint's graph settings) -> model.

:class:`Predictor` is what :func:`tlgnn.load_model` returns and what ``tlgnn predict`` uses. Structures that
cannot be read or turned into a graph are reported (``PredictionResult.failures``), never fatal.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from tlgnn.data.tasks import TaskSpec
from tlgnn.errors import TlgnnError
from tlgnn.graphs.records import builder_from_settings, record_graphs
from tlgnn.models.ensemble import is_ensemble
from tlgnn.training.checkpoint import CHECKPOINT_KEY, describe, load_module
from tlgnn.training.inference import predict_batches
from tlgnn.training.module import TransferModule
from tlgnn.training.outputs import prediction_frame


@dataclass
class PredictionResult:
    """Predictions for the structures that could be used, and why the others could not."""

    frame: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. known values whose id matched no structure

    def report(self) -> str:
        """One line per structure that has no prediction: ``<location>: <reason>``."""
        return "\n".join(f"{where}: {why}" for where, why in [*self.failures, *self.skipped])


class KnownValuesError(TlgnnError, ValueError):
    """A table of known values (``--known``, ``Predictor.predict(known=...)``) cannot be used: names the column,
    row or id and why."""


def known_labels(known: Any, tasks: Sequence[TaskSpec]) -> pd.DataFrame:
    """Known values of some tasks per structure id, for a head that uses them at prediction time (a difference
    head trained with ``use_known_low: true`` takes the known low-fidelity value instead of predicting it and,
    with ``condition_on_known_low``, its correction reads it; a head with ``context.known`` reads them as inputs).

    ``known``: a DataFrame or a CSV path with an ``id`` column and one column per regression task (the task's
    unit; empty cells = not known), or ``{id: {task: value}}``. Returns float columns indexed by id. Errors
    (:class:`KnownValuesError`, a ``ValueError``) name the column or the row.
    """
    if isinstance(known, (str, Path)):
        path = Path(known).expanduser()
        if not path.is_file():
            raise KnownValuesError(f"known values: file not found: {path}")
        frame = pd.read_csv(path, dtype={"id": str})
    elif isinstance(known, pd.DataFrame):
        frame = known.copy()
    elif isinstance(known, dict):
        frame = pd.DataFrame.from_dict(known, orient="index").rename_axis("id").reset_index()
    else:
        raise KnownValuesError(f"known values: give a DataFrame, a CSV path or {{id: {{task: value}}}}, got "
                         f"{type(known).__name__}")
    if "id" not in frame.columns:
        raise KnownValuesError(f"known values: no 'id' column (columns: {', '.join(map(str, frame.columns))})")
    by_name = {t.name: t for t in tasks}
    for column in frame.columns.drop("id"):
        if column not in by_name:
            close = difflib.get_close_matches(str(column), list(by_name), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise KnownValuesError(f"known values: column {column!r} is not a task of this model; {hint}tasks: "
                             f"{', '.join(by_name)}")
        if by_name[column].kind != "regression":
            raise KnownValuesError(f"known values: column {column!r} is a classification task; give regression tasks")
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna() & (frame[column].astype(str).str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise KnownValuesError(f"known values: column {column!r}, row {i} (id {frame['id'].iat[i]!r}): "
                             f"non-numeric value {frame[column].iat[i]!r}")
        frame[column] = values.astype(float)
    frame["id"] = frame["id"].astype(str)
    if frame["id"].duplicated().any():
        raise KnownValuesError(f"known values: id {frame['id'][frame['id'].duplicated()].iat[0]!r} appears twice")
    return frame.set_index("id")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """A trained model ready to predict: ``predict(structures)`` and ``embed(structures)``.

    Build it with :func:`tlgnn.load_model` (or :meth:`from_checkpoint`). ``structures`` may be pymatgen
    ``Structure`` objects, ASE ``Atoms``, file paths, folders or glob strings, or a list mixing them.
    """

    def __init__(self, module: TransferModule, device: str | torch.device | None = "cpu", batch_size: int = 64):
        self.module = module.eval()
        self.device = _resolve_device(device)
        self.module.to(self.device)
        self.batch_size = int(batch_size)
        self.builder = builder_from_settings(module.hparams.get("graph") or {})

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = "cpu", batch_size: int = 64) -> "Predictor":
        return cls(load_module(path), device=device, batch_size=batch_size)

    @property
    def tasks(self) -> list[TaskSpec]:
        """Every task the model knows (column order of its training labels)."""
        return list(self.module.tasks)

    @property
    def is_ensemble(self) -> bool:
        """Whether the model is an ensemble: its predictions come with ``<task>_std``, ``_lower``, ``_upper``."""
        return is_ensemble(self.module.model.head)

    @property
    def outputs(self) -> list[str]:
        """The tasks the model predicts."""
        return list(self.module.outputs)

    @property
    def metadata(self) -> dict[str, Any]:
        """The checkpoint's self-description (tasks, graph settings, model config, statistics, version)."""
        return describe(self.module)

    # ------------------------------------------------------------------ graphs
    def _records(self, structures: Any, n_jobs: int | None = None, progress: bool | None = None,
                 recursive: bool = False, disordered: str = "error"):
        from tlgnn.io import read_structures

        from ase import Atoms
        from pymatgen.core.structure import SiteCollection

        # one structure is iterable too (a Structure over its sites, Atoms over its atoms): wrap it, not iterate it
        if isinstance(structures, (str, Path, SiteCollection, Atoms)) or not isinstance(structures, Iterable):
            structures = [structures]
        result = read_structures(list(structures), on_error="skip", n_jobs=n_jobs, progress=progress,
                                 recursive=recursive, disordered=disordered)
        failures = [(_where(err), err.reason) for err in result.failures]
        return result.records, failures, list(result.skipped)

    def _graphs(self, records: Sequence[Any]) -> tuple[list[Any], list[str], list[tuple[str, str]]]:
        graphs, used, failures = record_graphs(self.builder, records)
        return graphs, [rec.id for rec in used], failures

    def _run(self, graphs: list[Any], want: str) -> Any:
        """The :class:`~tlgnn.training.inference.Inference` of ``graphs`` (``want="predict"``; an ensemble's
        extras too) or their embeddings [n, d] (``"embed"``)."""
        from torch_geometric.loader import DataLoader

        loader = DataLoader(graphs, batch_size=self.batch_size, shuffle=False)
        if want == "embed":
            return predict_batches(self.module, loader, embed=True, predict=False).embeddings
        return predict_batches(self.module, loader, extras=self.is_ensemble)

    def _attach_known(self, graphs: list[Any], ids: list[str], known: pd.DataFrame) -> list[str]:
        """Give every graph ``y`` [1, T] and ``y_mask`` [1, T] from the known values; returns notes."""
        tasks = [t.name for t in self.module.tasks]
        table = known.reindex(columns=tasks)
        rows = table.reindex(ids).to_numpy(dtype=np.float64) if ids else np.zeros((0, len(tasks)))
        present = ~np.isnan(rows)
        for i, graph in enumerate(graphs):
            graph.y = torch.tensor(np.nan_to_num(rows[i : i + 1]), dtype=torch.float32)
            graph.y_mask = torch.tensor(present[i : i + 1])
        notes = []
        unmatched = sorted(set(known.index) - set(ids))
        if unmatched:
            notes.append(f"known values for {len(unmatched)} id(s) that match no predicted structure, e.g. "
                         f"{', '.join(unmatched[:3])} (ids are file names without extension)")
        reads = self.module.model.head.reads_known()
        if not reads:
            notes.append("this model does not use known values (only a head with context.known or a difference "
                         "head trained with use_known_low: true does); the predictions ignore them")
        elif not set(reads) & set(known.columns):
            notes.append(f"this model uses known values of {', '.join(reads)} only; the table has none of them")
        return notes

    # ------------------------------------------------------------------ public
    def predict_result(self, structures: Any, n_jobs: int | None = None, progress: bool | None = None,
                       recursive: bool = False, disordered: str = "error", known: Any = None) -> PredictionResult:
        """Predictions plus the structures that could not be used (``tlgnn predict`` reports those).

        ``disordered``: partial-occupancy policy of ``tlgnn.io.read_structures`` ("error", "order", "drop").
        ``known``: known values of some tasks per id (see :func:`known_labels`), e.g. the computed PBE gap of each
        structure for a PBE -> HSE difference head trained with ``use_known_low: true``; the low task's own
        column stays the model's prediction, the tasks above it build on the known value where given.
        """
        table = None if known is None else known_labels(known, self.module.tasks)  # errors before any work
        records, failures, skipped = self._records(structures, n_jobs, progress, recursive, disordered)
        graphs, ids, graph_failures = self._graphs(records)
        notes = self._attach_known(graphs, ids, table) if table is not None else []
        got = self._run(graphs, "predict")
        frame = prediction_frame(ids, got.preds, [t for t in self.module.tasks if t.name in self.outputs],
                                 uncertainty=got.uncertainty)
        for name, values in got.extras.items():  # an ensemble's latents / corrections and their spread
            frame[name] = values
        return PredictionResult(frame=frame, failures=failures + graph_failures, skipped=skipped, notes=notes)

    def predict(self, structures: Any, known: Any = None) -> pd.DataFrame:
        """A DataFrame, a row per usable structure: ``id`` and one column per task (physical units).

        Classification tasks give the predicted class label and ``<task>_prob_<class>`` columns. Structures
        that cannot be read or graphed are left out with a warning naming them. ``known``: see
        :meth:`predict_result`.
        """
        result = self.predict_result(structures, known=known)
        if result.failures:
            warnings.warn(f"{len(result.failures)} structure(s) skipped:\n{result.report()}", stacklevel=2)
        for note in result.notes:
            warnings.warn(note, stacklevel=2)
        return result.frame

    def embed(self, structures: Any, return_ids: bool = False) -> np.ndarray | tuple[list[str], np.ndarray]:
        """Graph embeddings, numpy float32 [n, d], in the order of the usable structures; with ``return_ids``
        also their ids (``(ids, embeddings)``), since structures that cannot be used are left out."""
        records, failures, _ = self._records(structures)
        graphs, ids, graph_failures = self._graphs(records)
        if failures or graph_failures:
            report = "\n".join(f"{w}: {r}" for w, r in failures + graph_failures)
            warnings.warn(f"{len(failures) + len(graph_failures)} structure(s) skipped:\n{report}", stacklevel=2)
        embeddings = self._run(graphs, "embed")
        return (ids, embeddings) if return_ids else embeddings  # type: ignore[return-value]


def _where(err: Any) -> str:
    path, block = getattr(err, "path", None), getattr(err, "block", None)
    where = str(path) if path else "<input>"
    return f"{where}[{block}]" if block else where


__all__ = ["CHECKPOINT_KEY", "PredictionResult", "Predictor", "known_labels"]
