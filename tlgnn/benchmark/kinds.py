"""The benchmark's model kinds: which function computes a kind's cells, and the version of its results.

:data:`MODEL_KINDS` maps a kind to ``"module:function"`` (imported on first use, so the forests do not import
torch and the GNN kinds do not load until run). :data:`MODEL_VERSIONS` holds each kind's version: bump it
whenever the kind's results may change (its code, its defaults, the training code under it). Every cell records
the version that computed it (``model_version``); a finished cell of an older version counts as unfinished: the
runner recomputes it and the report names it until then.

Cells written before versions were recorded carry none. Such a cell counts as version 1, except for the kinds in
:data:`UNVERSIONED`: there a cell finished before the change that made the next version (``finished_at``
earlier than the commit date) counts as the version before it, a later one as the version after.

Version history:

- every kind: 1 (cells without a version).
- ``gnn_difference`` 2: commit 6cbf56f (2026-11-26 11:24 UTC), each Δ normalised with the statistics of
  ``high − low`` over the training rows that have both labels (docs/results.md, "Status").

Not a version change: issue 16's Δ(g, y_low) (the difference head's ``condition_on_known_low``, on by default with
``use_known_low``) is off in the benchmark unless a model entry sets the GNN option ``condition_on_known_low``, so
the ``gnn_difference`` cells keep their results; a frozen encoder trains the head on cached embeddings with the
same results as running the encoder every batch (tests/training/test_frozen.py).
"""

from __future__ import annotations

from typing import Any

#: kind -> "module:function" implementing ``run(cell: CellInput) -> CellOutput``.
MODEL_KINDS: dict[str, str] = {
    "rf_single": "tlgnn.benchmark.baseline_models:run_rf_single",
    "rf_difference": "tlgnn.benchmark.baseline_models:run_rf_difference",
    "affine": "tlgnn.benchmark.baseline_models:run_affine",
    **{
        f"gnn_{name}": "tlgnn.benchmark.gnn:run_gnn_cell"
        for name in ("single", "union", "multitask", "difference", "fidelity", "finetune", "elv")
    },
}

#: kind -> version of its results (see the module docstring; bump when results may change).
MODEL_VERSIONS: dict[str, int] = {**{kind: 1 for kind in MODEL_KINDS}, "gnn_difference": 2}

#: kind -> (ISO time of the change, version of unversioned cells finished before it, version of those after)
UNVERSIONED: dict[str, tuple[str, int, int]] = {"gnn_difference": ("2026-11-26T11:24:25+00:00", 1, 2)}


def kind_version(kind: str) -> int:
    """The current version of ``kind``'s results (1 for a kind registered without one)."""
    return MODEL_VERSIONS.get(kind, 1)


def cell_version(record: dict[str, Any]) -> int:
    """The version of the kind that computed a finished cell (its JSON ``record``); see the module docstring
    for cells without ``model_version``."""
    version = record.get("model_version")
    if isinstance(version, int):
        return version
    rule = UNVERSIONED.get(str(record.get("kind")))
    if rule is None:
        return 1
    changed_at, before, after = rule
    finished = str(record.get("finished_at") or "")
    # ISO 8601 times of one form (UTC, seconds) order as strings; an unknown time counts as before
    return after if finished >= changed_at else before


def is_current(record: dict[str, Any]) -> bool:
    """Whether a finished cell was computed by the current version of its kind."""
    return cell_version(record) >= kind_version(str(record.get("kind")))


def register_model(kind: str, target: str, version: int = 1) -> None:
    """Register (or replace) a model kind as ``"module:function"`` with the version of its results."""
    if ":" not in target:
        raise ValueError(f"model target must look like 'package.module:function', got {target!r}")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"model version must be an integer >= 1, got {version!r}")
    MODEL_KINDS[kind] = target
    MODEL_VERSIONS[kind] = version


__all__ = ["MODEL_KINDS", "MODEL_VERSIONS", "UNVERSIONED", "cell_version", "is_current", "kind_version",
           "register_model"]
