"""Task metadata that travels with the data: one :class:`TaskSpec` per (source, property) pair.

Heads, losses, metrics, normalisation and checkpoints all read the same description, so no head hard-codes a
task name. A task is never merged with another one that "means the same thing": the PBE gap of two database
versions is two tasks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from tlgnn.utils.config import ConfigError

TaskKind = Literal["regression", "classification"]


@dataclass
class TaskSpec:
    """One prediction target.

    Attributes:
        name: unique task name, also the column of the aligned table (e.g. ``"gap_hse"``).
        kind: ``"regression"`` (a float in ``unit``) or ``"classification"`` (labels stored as class index).
        unit: physical unit of a regression target (``"eV"``, ``"eV/atom"``), ``None`` when unitless.
        fidelity: optional fidelity name (``"pbe"``, ``"hse"``, ``"exp"``) used by fidelity-aware heads.
        classes: the class labels, in index order, for a classification task (e.g. ``[0, 1]`` or
            ``["metal", "non-metal"]``); ``None`` for regression.
        source: the name of the source the labels come from.
        valid_range: ``[low, high]`` (label units; ``None`` for an open end) a physical value must lie in;
            ``None``: the default of :meth:`physical_range` (band gaps >= 0, nothing else checked).
    """

    name: str
    kind: TaskKind = "regression"
    unit: str | None = None
    fidelity: str | None = None
    classes: list[Any] | None = None
    source: str | None = None
    valid_range: list[float | None] | None = None

    def validate(self) -> None:
        """Cross-field checks; raises :class:`ConfigError` naming the field."""
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("name", "a task needs a non-empty name")
        if self.kind not in ("regression", "classification"):
            raise ConfigError("kind", f"must be 'regression' or 'classification', got {self.kind!r}")
        if self.kind == "classification":
            if not self.classes or len(self.classes) < 2:
                raise ConfigError("classes", f"task {self.name!r}: classification needs at least 2 classes")
            if len({str(c) for c in self.classes}) != len(self.classes):
                raise ConfigError("classes", f"task {self.name!r}: classes must be distinct, got {self.classes}")
        elif self.classes is not None:
            raise ConfigError("classes", f"task {self.name!r}: a regression task takes no classes")
        if self.valid_range is not None:
            _check_range(self)

    def physical_range(self) -> tuple[float, float] | None:
        """``(low, high)`` a label must lie in (``-inf``/``inf`` for an open end), or ``None`` when unchecked.

        ``valid_range`` when given (``[null, null]`` turns the check off); otherwise a band gap (a regression task
        with ``unit: eV`` and a ``fidelity``) must be >= 0 eV, and other tasks (formation energies...) are
        unchecked."""
        if self.kind != "regression":
            return None
        if self.valid_range is not None:
            low, high = self.valid_range
            if low is None and high is None:
                return None
            return (-math.inf if low is None else float(low), math.inf if high is None else float(high))
        if self.unit == "eV" and self.fidelity:
            return (0.0, math.inf)
        return None

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.classes) if self.classes else 0

    def class_index(self, label: Any) -> int:
        """Index of a class label; accepts the label itself or its string form (``"1"`` for ``1``).

        Raises ``KeyError`` when the label is not one of :attr:`classes`.
        """
        if not self.classes:
            raise KeyError(f"task {self.name!r} is not a classification task")
        for i, c in enumerate(self.classes):
            if label == c or str(label).strip() == str(c):
                return i
            if isinstance(c, (int, float)) and not isinstance(c, bool):
                try:
                    if float(label) == float(c):
                        return i
                except (TypeError, ValueError):
                    pass
        raise KeyError(f"{label!r} is not a class of task {self.name!r} (classes: {self.classes})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the aligned parquet metadata and in checkpoints); ``valid_range`` only when
        set, so tables and checkpoints without one read as before."""
        data = dataclasses.asdict(self)
        if data["valid_range"] is None:
            del data["valid_range"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskSpec":
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        from tlgnn.utils.config import from_dict

        return from_dict(cls, data)


def _check_range(task: TaskSpec) -> None:
    rng = task.valid_range
    if not isinstance(rng, (list, tuple)) or len(rng) != 2:
        raise ConfigError("valid_range", f"task {task.name!r}: give [low, high] (null for an open end), got {rng!r}")
    for bound in rng:
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                  or not math.isfinite(bound)):
            raise ConfigError("valid_range", f"task {task.name!r}: bounds must be finite numbers or null, got {rng}")
    if task.kind != "regression":
        raise ConfigError("valid_range", f"task {task.name!r}: only regression tasks take a valid range")
    if rng[0] is not None and rng[1] is not None and rng[0] > rng[1]:
        raise ConfigError("valid_range", f"task {task.name!r}: low {rng[0]} is above high {rng[1]}")


def task_names(tasks: list[TaskSpec]) -> list[str]:
    """The names of ``tasks`` in order."""
    return [t.name for t in tasks]


def select_tasks(tasks: list[TaskSpec], names: list[str] | None) -> list[TaskSpec]:
    """The tasks named in ``names`` in that order (all when ``None``); unknown names are a ConfigError."""
    if names is None:
        return list(tasks)
    by_name = {t.name: t for t in tasks}
    out = []
    for i, name in enumerate(names):
        if name not in by_name:
            import difflib

            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(by_name)}"
            raise ConfigError(f"data.tasks[{i}]", f"unknown task {name!r}{hint}")
        out.append(by_name[name])
    if len(set(names)) != len(names):
        raise ConfigError("data.tasks", f"a task is listed twice: {names}")
    return out


__all__ = ["TaskKind", "TaskSpec", "select_tasks", "task_names"]
