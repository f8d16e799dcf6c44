"""tlgnn.data: source tables -> one aligned material table -> datasets, splits and a LightningDataModule.

Light names are imported eagerly; the heavy ones (torch, PyG, Lightning, pymatgen) on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from tlgnn.data.config import DataConfig, GraphConfig, SplitConfig
from tlgnn.data.tasks import TaskSpec, select_tasks, task_names

_LAZY = {
    "SourceSpec": "tlgnn.data.source_config",
    "SourceTable": "tlgnn.data.source_table",
    "SourceError": "tlgnn.data.errors",
    "AlignmentError": "tlgnn.data.errors",
    "load_source_config": "tlgnn.data.source_config",
    "load_source": "tlgnn.data.sources",
    "AlignmentConfig": "tlgnn.data.source_config",
    "align": "tlgnn.data.alignment",
    "align_config": "tlgnn.data.alignment",
    "AlignmentReport": "tlgnn.data.report",
    "MaterialTable": "tlgnn.data.table",
    "MaterialDataset": "tlgnn.data.dataset",
    "StructureDataset": "tlgnn.data.dataset",
    "Split": "tlgnn.data.splits",
    "make_split": "tlgnn.data.splits",
    "check_split": "tlgnn.data.splits",
    "save_split": "tlgnn.data.splits",
    "load_split": "tlgnn.data.splits",
    "TransferDataModule": "tlgnn.data.datamodule",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlgnn.data' has no attribute {name!r}")


__all__ = ["DataConfig", "GraphConfig", "SplitConfig", "TaskSpec", "select_tasks", "task_names", *_LAZY]
