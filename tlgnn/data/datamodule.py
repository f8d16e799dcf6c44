"""``TransferDataModule``: the data config -> aligned table -> graphs -> split -> DataLoaders of PyG batches."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from tlgnn.data.config import DataConfig
from tlgnn.data.dataset import MaterialDataset, StructureDataset
from tlgnn.data.embedded import EmbeddedDataset
from tlgnn.data.loader import graph_loader
from tlgnn.data.report import console_warnings
from tlgnn.data.splits import Split, check_split, check_split_settings, load_split, make_split, save_split
from tlgnn.data.table import TABLE_FILE, MaterialTable
from tlgnn.data.tasks import TaskSpec, select_tasks
from tlgnn.utils.files import CorruptFileError, file_digest

MIN_STD = 1e-8


def _source_fingerprint(config: DataConfig) -> str:
    """Hash of the source YAML, its overrides, the contents of every table it names and the size/mtime of each
    file in a ``files`` folder (cache key). Tables are hashed by content: a corrected file copied with its old
    timestamp (``cp -p``, ``rsync -a``) still realigns."""
    from tlgnn.data.source_config import load_source_config
    from tlgnn.data.structures import CACHE_VERSION, structure_folder
    from tlgnn.utils.config import resolve_path

    path = Path(config.sources)  # type: ignore[arg-type]
    align_cfg, base = load_source_config(path, config.source_overrides)
    h = hashlib.sha256(path.read_bytes())
    h.update(json.dumps(config.source_overrides).encode() + f"|v{CACHE_VERSION}".encode())
    for spec in align_cfg.sources:
        names = [spec.path] + ([spec.structure.path] if spec.structure and spec.structure.path else [])
        for name in names:
            p = resolve_path(name, base, normalize=False)
            h.update(f"{p}|{file_digest(p) if p.is_file() else 'missing'}".encode())
        if spec.structure is not None and spec.structure.kind == "files":
            # a structure file replaced, added or removed in the folder makes a new alignment
            folder = structure_folder(spec, base)
            if folder.is_dir():
                for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                    stat = entry.stat()
                    h.update(f"{entry.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def load_table(config: DataConfig, log=None) -> tuple[MaterialTable, Path | None]:
    """The aligned table of ``config`` and the path of its report (``None`` if there is none).

    With ``sources``, the alignment runs on first use and is stored under ``align_dir`` (default:
    ``<cache_dir>/aligned/<fingerprint>``), reused while the YAML and its files are unchanged. The table is
    loaded with ``structures="lazy"``: the structures' JSON stays in the file and is read only to build graphs
    the cache lacks, so memory does not grow with it.
    """
    from tlgnn.data.alignment import AlignmentError, align_config, write_alignment

    if config.aligned is not None:
        path = Path(config.aligned).expanduser()
        try:
            table = MaterialTable.load(path, structures="lazy")
        except CorruptFileError as err:
            raise AlignmentError(f"data.aligned: {err}") from None
        folder = path if path.is_dir() else path.parent
        report = folder / "report.md"
        return table, (report if report.is_file() else None)
    out = Path(config.align_dir).expanduser() if config.align_dir else \
        Path(config.cache_dir).expanduser() / "aligned" / _source_fingerprint(config)
    if (out / TABLE_FILE).is_file():
        try:
            return MaterialTable.load(out, structures="lazy"), out / "report.md"
        except CorruptFileError as err:  # a cache: set the damaged one aside and align again
            aside = out.parent / "corrupt" / f"{out.name}-{os.getpid()}-{secrets.token_hex(4)}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out, aside)
            print(f"tlgnn: the cached alignment is damaged ({err}); moved to {aside}, aligning again",
                  file=sys.stderr)
    table, report = align_config(config.sources, config.source_overrides,  # type: ignore[arg-type]
                                 n_jobs=config.n_jobs, cache_dir=config.cache_dir, log=log)
    write_alignment(table, report, out)
    return MaterialTable.load(out, structures="lazy"), out / "report.md"


def _evaluation_sampler(dataset):
    """Under multi-process training (DDP): every rank evaluates its own shard and each item exactly once.

    Lightning's default ``DistributedSampler`` pads the shards to equal length by repeating items, so validation
    and test metrics gathered across ranks would count some materials twice. ``None`` in a single process.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


class TransferDataModule(L.LightningDataModule):
    """PyG batches (``y`` [B, T], ``y_mask`` [B, T], ``idx`` [B]) for the tasks of a :class:`DataConfig`.

    After :meth:`setup`: ``tasks`` (list of :class:`TaskSpec`), ``table`` (the aligned table restricted to rows
    with at least one selected label when ``drop_missing``), ``aligned_count`` (rows before that restriction),
    ``split``, ``train_set``/``val_set``/``test_set``, ``alignment_report`` (path of report.md, or ``None``).

    Args:
        config: the data config (paths already resolved, see :meth:`DataConfig.resolve_paths`).
        table: an already aligned table to use instead of ``config.sources``/``config.aligned``.
    """

    def __init__(self, config: DataConfig, table: MaterialTable | None = None):
        super().__init__()
        self.config = config
        self._given_table = table
        self.table: MaterialTable | None = None
        self.tasks: list[TaskSpec] = []
        self.split: Split | None = None
        self.alignment_report: Path | None = None
        self.aligned_count = 0  # materials in the aligned table before those without any selected label left out
        self.dataset: MaterialDataset | None = None
        self.train_set = self.val_set = self.test_set = None
        self._cache = None

    # ------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Load/align the table, select tasks, build graphs (cached), draw or load the split. Idempotent."""
        if self.dataset is not None:
            return
        cfg = self.config
        if self._given_table is not None:
            table, self.alignment_report = self._given_table, None
        else:
            table, self.alignment_report = load_table(cfg)
        self.tasks = select_tasks(table.tasks, cfg.tasks)
        names = [t.name for t in self.tasks]
        self.aligned_count = len(table)
        if cfg.drop_missing:
            keep = table.frame[names].notna().any(axis=1).to_numpy()
            if not keep.all():
                table = table.subset(np.flatnonzero(keep))
        if len(table) == 0:
            from tlgnn.data.alignment import AlignmentError

            where = f"; see the alignment report {self.alignment_report}" if self.alignment_report else ""
            raise AlignmentError(f"data: none of the {self.aligned_count} aligned materials has a label for any of "
                                 f"the tasks {names}{where}")
        self.table = table
        self.dataset = MaterialDataset(table, self.graph_cache(), names)
        if cfg.split.file and Path(cfg.split.file).is_file():
            self.split = load_split(cfg.split.file, table)
            check_split_settings(self.split, cfg.split, cfg.split.file)
        else:
            self.split = make_split(table, cfg.split)
            if cfg.split.file:
                save_split(self.split, table, cfg.split.file)
        check_split(self.split, table)
        self.train_set = self.dataset.subset(self.split.train)
        self.val_set = self.dataset.subset(self.split.val)
        self.test_set = self.dataset.subset(self.split.test)

    def use_embeddings(self, embeddings: Any, element_counts: Any) -> None:
        """Serve stored graph embeddings instead of graphs from now on (a frozen encoder: see
        :mod:`tlgnn.embeddings`): ``embeddings`` [n_rows, d] and ``element_counts`` [n_rows, 119] in table row order.
        The split, labels and ids stay; the loaders yield :class:`tlgnn.data.embedded.EmbeddedBatch` objects."""
        self._require_setup()
        self.dataset = EmbeddedDataset(self.dataset, embeddings, element_counts)
        self.train_set = self.dataset.subset(self.split.train)  # type: ignore[union-attr]
        self.val_set = self.dataset.subset(self.split.val)  # type: ignore[union-attr]
        self.test_set = self.dataset.subset(self.split.test)  # type: ignore[union-attr]

    @property
    def embedded(self) -> bool:
        """Whether the loaders serve stored embeddings (:meth:`use_embeddings`)."""
        return isinstance(self.dataset, EmbeddedDataset)

    def alignment_warnings(self) -> list[str]:
        """Console lines about the data (rows a source lost, labels outside their valid range, conflicting
        duplicates and the policy that merged them: :func:`tlgnn.data.report.console_warnings`), read from the
        ``report.json`` beside the alignment report; empty when there is none."""
        if self.alignment_report is None:
            return []
        path = Path(self.alignment_report).with_name("report.json")
        if not path.is_file():
            return []
        try:
            report = json.loads(path.read_text())
            return ["data: " + line for line in console_warnings(report)]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return [f"data: warning: cannot read the alignment report {path} ({type(err).__name__}: {err})"]

    def graph_cache(self):
        """The graph cache for ``config.graph`` under ``config.cache_dir``."""
        if self._cache is None:
            from tlgnn.data.graphs import graph_cache

            self._cache = graph_cache(self.config.cache_dir, self.config.graph.cutoff, self.config.graph.max_neighbors)
        return self._cache

    def save_split(self, path: str | Path) -> Path:
        """Write the current split (material ids) to ``path`` for reuse via ``split.file``."""
        self._require_setup()
        return save_split(self.split, self.table, path)  # type: ignore[arg-type]

    def _require_setup(self) -> None:
        if self.dataset is None:
            raise RuntimeError("TransferDataModule: call setup() first")

    # ---------------------------------------------------------------------------------------- statistics
    def _training_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(y [n_train, T] float64, present [n_train, T] bool)`` of the TRAINING split's rows."""
        self._require_setup()
        train = np.asarray(self.split.train, dtype=np.int64)  # type: ignore[union-attr]
        return (self.dataset.y[train].numpy().astype(np.float64),  # type: ignore[union-attr]
                self.dataset.y_mask[train].numpy())  # type: ignore[union-attr]

    def target_stats(self) -> tuple[dict[str, float], dict[str, float]]:
        """Per regression task: mean and std (population) of the labels present in the TRAINING split.

        A task with fewer than two training labels, or zero spread, gets std 1.0 (mean 0.0 if it has none).
        """
        y, present = self._training_labels()
        mean: dict[str, float] = {}
        std: dict[str, float] = {}
        for k, task in enumerate(self.tasks):
            if task.kind != "regression":
                continue
            vals = y[present[:, k], k]
            mean[task.name] = float(vals.mean()) if len(vals) else 0.0
            s = float(vals.std()) if len(vals) > 1 else 1.0
            std[task.name] = s if s > MIN_STD else 1.0
        return mean, std

    def pair_stats(self) -> dict[str, dict[str, list[float]]]:
        """``{high: {low: [mean, std]}}``: mean and std (population) of ``high - low`` over the TRAINING rows
        labelled with both, for every ordered pair of regression tasks with at least two such rows and a spread
        above zero (what a difference head normalises its Δ with; see :class:`~tlgnn.models.heads.DifferenceHead`).
        """
        y, present = self._training_labels()
        regression = [k for k, task in enumerate(self.tasks) if task.kind == "regression"]
        out: dict[str, dict[str, list[float]]] = {}
        for high in regression:
            for low in regression:
                both = present[:, high] & present[:, low]
                if high == low or both.sum() < 2:
                    continue
                diff = y[both, high] - y[both, low]
                if diff.std() > MIN_STD:
                    out.setdefault(self.tasks[high].name, {})[self.tasks[low].name] = [float(diff.mean()),
                                                                                        float(diff.std())]
        return out

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Labels present per task in each split part."""
        self._require_setup()
        out = {}
        for part, rows in self.split.parts().items():  # type: ignore[union-attr]
            m = self.dataset.y_mask[np.asarray(rows, dtype=np.int64)]  # type: ignore[union-attr]
            out[part] = {t.name: int(m[:, k].sum()) for k, t in enumerate(self.tasks)}
        return out

    # --------------------------------------------------------------------------------------- dataloaders
    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        """Batches of ``dataset``: fetched whole from the graph packs for a :class:`MaterialDataset`
        (:func:`tlgnn.data.loader.graph_loader`), item by item with PyG's collation otherwise."""
        cfg = self.config
        import torch

        generator = torch.Generator().manual_seed(cfg.split.seed) if shuffle else None
        sampler = None if shuffle else _evaluation_sampler(dataset)
        return graph_loader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=cfg.num_workers,
                            pin_memory=cfg.pin_memory, persistent_workers=cfg.num_workers > 0, generator=generator,
                            sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.test_set, shuffle=False)

    def predict_dataset(self, records: Any) -> StructureDataset:
        """A :class:`StructureDataset` of new structures with this module's tasks and graph settings."""
        from tlgnn.graphs import CrystalGraphBuilder

        builder = CrystalGraphBuilder(cutoff=self.config.graph.cutoff, max_neighbors=self.config.graph.max_neighbors)
        return StructureDataset(records, builder, self.tasks or None)

    def predict_dataloader_for(self, records: Any) -> DataLoader:
        """Batches of new structures (``y_mask`` all False) for ``Trainer.predict``."""
        return self._loader(self.predict_dataset(records), shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Tasks and split sizes, saved in Lightning checkpoints (the split itself lives in ``split.file``)."""
        return {"tasks": [t.to_dict() for t in self.tasks],
                "split": self.split.sizes() if self.split is not None else None}


__all__ = ["TransferDataModule", "load_table"]
