"""The ``data`` section of a run config: where the labels come from, which tasks, graphs, split, loaders.

Loaded with :func:`tlgnn.utils.config.from_dict` (unknown keys, wrong types and cross-field problems are a
:class:`~tlgnn.utils.config.ConfigError` naming the dotted key). Example::

    data:
      sources: ../data/mp_sample.yaml        # a source YAML (aligned on the fly, cached) ...
      # aligned: runs/align/aligned.parquet  # ... or an already aligned table (file or its folder)
      tasks: [band_gap_pbe, gap_hse]         # subset and order (default: all tasks of the table)
      graph: {cutoff: 8.0, max_neighbors: 12}
      split: {kind: target_task, target_task: gap_hse, val_fraction: 0.1, test_fraction: 0.1, seed: 0}
      batch_size: 64
      num_workers: 0

Paths (``sources``, ``aligned``, ``split.file``, ``cache_dir``, ``align_dir``) are resolved by
:meth:`DataConfig.resolve_paths` relative to the directory of the YAML file they were written in, unless they
are absolute; ``~`` is expanded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tlgnn.utils.config import ConfigError, resolve_path

SplitKind = Literal["random", "grouped", "formula", "kfold", "target_task"]
GroupBy = Literal["row", "material", "formula"]

#: Default cache root (graphs, aligned tables built on the fly); ``$TLGNN_CACHE_DIR`` overrides it.
DEFAULT_CACHE_DIR = "~/.cache/tlgnn"


def default_cache_dir() -> str:
    """``$TLGNN_CACHE_DIR`` if set, else ``~/.cache/tlgnn``."""
    return os.environ.get("TLGNN_CACHE_DIR", DEFAULT_CACHE_DIR)


@dataclass
class GraphConfig:
    """Crystal graph settings passed to :class:`tlgnn.graphs.CrystalGraphBuilder`.

    Attributes:
        cutoff: neighbour cutoff radius in Å.
        max_neighbors: keep at most this many nearest neighbours per atom (``None`` = all within cutoff).
    """

    cutoff: float = 8.0
    max_neighbors: int | None = 12

    def validate(self) -> None:
        if not self.cutoff > 0:
            raise ConfigError("cutoff", f"must be > 0 Å, got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ConfigError("max_neighbors", f"must be >= 1 or null, got {self.max_neighbors}")


@dataclass
class SplitConfig:
    """How materials are split into train / val / test (see :mod:`tlgnn.data.splits`).

    Attributes:
        kind: ``random`` (per material row); ``grouped`` (rows that share a source record, e.g. one formula
            label copied to several polymorphs, stay on one side); ``formula`` (grouped by reduced formula, so
            polymorphs do not leak); ``kfold`` (k-fold cross-validation over groups, ``fold`` is the test
            fold); ``target_task`` (validation and test drawn only from rows labelled for ``target_task``,
            every other row trains).
        seed: random seed; the same seed and table give the same split.
        val_fraction: fraction of materials (of the target task's labelled rows for ``target_task``) for
            validation. For ``kfold`` the fraction of the non-test groups held out for validation.
        test_fraction: fraction for test (ignored by ``kfold``, where the test set is fold ``fold``).
        n_folds: number of folds for ``kfold``.
        fold: which fold is the test fold for ``kfold`` (0-based).
        target_task: the scarce task for ``target_task`` splits.
        group_by: grouping used by ``kfold`` and ``target_task`` (``row``, ``material`` or ``formula``).
        file: a saved split file (JSON written by :func:`tlgnn.data.splits.save_split`) to reuse instead of
            drawing a new one; it is checked against the table.
    """

    kind: SplitKind = "random"
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    n_folds: int = 5
    fold: int = 0
    target_task: str | None = None
    group_by: GroupBy = "material"
    file: str | None = None

    def validate(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(name, f"must be in [0, 1), got {value}")
        if self.kind != "kfold" and self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "val_fraction",
                f"val_fraction + test_fraction must be < 1 (got {self.val_fraction} + {self.test_fraction})",
            )
        if self.n_folds < 2:
            raise ConfigError("n_folds", f"must be >= 2, got {self.n_folds}")
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError("fold", f"must be in [0, n_folds={self.n_folds}), got {self.fold}")
        if self.kind == "target_task" and not self.target_task:
            raise ConfigError("target_task", "kind 'target_task' needs the name of the target task")


@dataclass
class DataConfig:
    """The data section of a run config.

    Attributes:
        sources: a source YAML (``configs/data/*.yaml``); it is aligned on first use and the aligned table is
            cached under ``align_dir`` (default ``<cache_dir>/aligned/<hash of the source config>``).
        aligned: an ``aligned.parquet`` written by ``tlgnn align`` or the folder that holds it.
        source_overrides: ``key=value`` overrides applied to the source YAML (as ``tlgnn align --set``), e.g.
            ``sources.A.path=/data/labels.csv.gz``.
        tasks: the tasks to train on, in this order (default: every task of the aligned table).
        graph: graph builder settings.
        split: train/val/test split.
        cache_dir: root of the graph cache (and of aligned tables built on the fly).
        align_dir: where an on-the-fly alignment is written (default: under ``cache_dir``).
        batch_size: graphs per batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        pin_memory: DataLoader ``pin_memory`` (useful with a GPU).
        n_jobs: processes for parsing structures and building graphs (``None`` = all cores).
        drop_missing: drop materials that have none of the selected tasks (they carry no training signal).
    """

    sources: str | None = None
    aligned: str | None = None
    source_overrides: list[str] = field(default_factory=list)
    tasks: list[str] | None = None
    graph: GraphConfig = field(default_factory=GraphConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    cache_dir: str = field(default_factory=default_cache_dir)
    align_dir: str | None = None
    batch_size: int = 64
    num_workers: int = 0
    pin_memory: bool = False
    n_jobs: int | None = None
    drop_missing: bool = True

    def validate(self) -> None:
        if (self.sources is None) == (self.aligned is None):
            raise ConfigError(
                "sources", "give exactly one of 'sources' (a source YAML) or 'aligned' (an aligned table)"
            )
        if self.source_overrides and self.sources is None:
            raise ConfigError("source_overrides", "only applies together with 'sources'")
        if self.tasks is not None:
            if not self.tasks:
                raise ConfigError("tasks", "an empty task list; leave it out to use every task")
            if len(set(self.tasks)) != len(self.tasks):
                raise ConfigError("tasks", f"a task is listed twice: {self.tasks}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.n_jobs is not None and self.n_jobs < 1:
            raise ConfigError("n_jobs", f"must be >= 1 or null, got {self.n_jobs}")
        if self.split.kind == "target_task" and self.tasks is not None:
            if self.split.target_task not in self.tasks:
                raise ConfigError(
                    "split.target_task", f"{self.split.target_task!r} is not one of data.tasks {self.tasks}"
                )

    def resolve_paths(self, base_dir: str | Path) -> "DataConfig":
        """Make relative paths absolute against ``base_dir`` (the directory of the YAML they came from).

        Absolute paths are kept, ``~`` is expanded; returns ``self`` (modified in place) for chaining.
        """
        base = Path(base_dir).expanduser()

        def fix(value: str | None) -> str | None:
            return None if value is None else str(resolve_path(value, base))

        self.sources = fix(self.sources)
        self.aligned = fix(self.aligned)
        self.cache_dir = fix(self.cache_dir)  # type: ignore[assignment]
        self.align_dir = fix(self.align_dir)
        self.split.file = fix(self.split.file)
        return self


__all__ = ["DEFAULT_CACHE_DIR", "DataConfig", "GraphConfig", "SplitConfig", "default_cache_dir"]
