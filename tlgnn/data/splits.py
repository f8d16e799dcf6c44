"""Train/val/test splits of an aligned table: random, grouped, formula-grouped, k-fold, target-task.

Groups keep related rows on one side: ``material`` groups join rows that share a source record (a formula label
attached to several polymorphs, a link to one material), ``formula`` groups additionally join every row with the
same reduced formula (polymorphs never leak). A split is reproducible from (table, config, seed), can be saved to
and reloaded from JSON (by ``material_id``), and :func:`check_split` verifies it is leak-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlgnn.data.config import SplitConfig
from tlgnn.data.table import MaterialTable
from tlgnn.errors import DataError
from tlgnn.utils.config import to_dict
from tlgnn.utils.files import write_text_atomic

PARTS = ("train", "val", "test")


class SplitError(DataError, ValueError):
    """A split is invalid (overlap, leak across groups, unknown materials) or cannot be drawn."""


@dataclass
class Split:
    """Row indices (into the table the split was drawn on) of each part, and how it was made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    kind: str
    seed: int
    info: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def sizes(self) -> dict[str, int]:
        return {k: int(len(v)) for k, v in self.parts().items()}


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def groups(table: MaterialTable, by: str = "material") -> np.ndarray:
    """Group label per row: ``row`` (every row alone), ``material`` (rows sharing a source record), or
    ``formula`` (material groups joined with rows of the same reduced formula)."""
    n = len(table)
    if by == "row":
        return np.arange(n, dtype=np.int64)
    if by not in ("material", "formula"):
        raise ValueError(f"group_by must be 'row', 'material' or 'formula', got {by!r}")
    uf = _UnionFind(n)
    first: dict[Any, int] = {}
    for i, text in enumerate(table.frame["provenance"].tolist()):
        for src, rows in json.loads(text).values():
            for r in rows if isinstance(rows, list) else [rows]:
                key = (src, r)
                if key in first:
                    uf.union(first[key], i)
                else:
                    first[key] = i
    if by == "formula":
        seen: dict[str, int] = {}
        for i, formula in enumerate(table.frame["formula"].tolist()):
            if formula in seen:
                uf.union(seen[formula], i)
            else:
                seen[formula] = i
    return uf.labels()


def group_order(table: MaterialTable, group_of: np.ndarray, by: str, seed: int,
                among: np.ndarray | None = None) -> dict[int, str]:
    """A seeded sort key per group that depends only on the group's materials, not on row positions: the hash
    of ``seed`` and the group's smallest material id (``row``/``material``) or reduced formula (``formula``),
    over the rows in ``among`` (default: all; ``target_task`` splits: the target's labelled rows). Two tables
    holding the same labelled materials (a single-task table and the multi-task table it came from) therefore
    order their groups alike, and a ``target_task`` split gives both the same test crystals."""
    column = "formula" if by == "formula" else "material_id"
    names = table.frame[column].astype(str).to_numpy()
    rows = np.arange(len(group_of)) if among is None else np.flatnonzero(among)
    smallest: dict[int, str] = {}
    for g, name in zip(group_of[rows].tolist(), names[rows].tolist()):
        if g not in smallest or name < smallest[g]:
            smallest[g] = name
    return {g: hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest() for g, name in smallest.items()}


def _assign(group_of: np.ndarray, candidates: np.ndarray, fractions: list[float], order: dict[int, str],
            weight_rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Take the groups of ``candidates`` in ``order`` and fill parts (in order) up to ``fractions`` of the
    weighted rows.

    Returns the groups of each part; groups left over are returned last.
    """
    weights = np.ones(len(group_of)) if weight_rows is None else weight_rows.astype(float)
    uniq = np.asarray(sorted(np.unique(group_of[candidates]).tolist(), key=order.__getitem__), dtype=np.int64)
    size = {g: 0.0 for g in uniq}
    for i in candidates:
        size[group_of[i]] += weights[i]
    total = sum(size.values())
    out: list[list] = [[] for _ in fractions] + [[]]
    targets = [f * total for f in fractions]
    filled = [0.0] * len(fractions)
    for g in uniq:
        for k, target in enumerate(targets):
            if filled[k] < target and filled[k] + size[g] / 2 <= target:
                out[k].append(g)
                filled[k] += size[g]
                break
        else:
            out[-1].append(g)
    return [np.asarray(o, dtype=np.int64) for o in out]


def make_split(table: MaterialTable, config: SplitConfig) -> Split:
    """Draw a split of every row of ``table`` (restrict the table first to rows worth training on).

    ``random``: rows; ``grouped``: material groups; ``formula``: formula groups; ``kfold``: groups (``group_by``)
    dealt into ``n_folds`` folds of balanced size, fold ``fold`` is test and ``val_fraction`` of the other groups
    validate; ``target_task``: val/test groups drawn among rows labelled for ``target_task`` (their size measured in
    labelled rows), every other row trains.
    """
    by = {"random": "row", "grouped": "material", "formula": "formula"}.get(config.kind, config.group_by)
    group_of = groups(table, by)
    order = group_order(table, group_of, by, config.seed)
    all_rows = np.arange(len(table))
    info: dict[str, Any] = {"group_by": by, "config": to_dict(config)}
    if config.kind in ("random", "grouped", "formula"):
        test_g, val_g, _ = _assign(group_of, all_rows, [config.test_fraction, config.val_fraction], order)
    elif config.kind == "kfold":
        uniq = sorted(np.unique(group_of).tolist(), key=order.__getitem__)
        counts = np.bincount(np.searchsorted(np.unique(group_of), group_of))
        size = dict(zip(np.unique(group_of), counts))
        folds: list[list] = [[] for _ in range(config.n_folds)]
        load = np.zeros(config.n_folds)
        for g in sorted(uniq, key=lambda g: -size[g]):  # largest first, to the lightest fold; ties by the order
            k = int(np.argmin(load))
            folds[k].append(g)
            load[k] += size[g]
        test_g = np.asarray(folds[config.fold], dtype=np.int64)
        rest = all_rows[~np.isin(group_of, test_g)]
        frac = config.val_fraction
        val_g, _ = _assign(group_of, rest, [frac], order)
        info["fold_sizes"] = load.astype(int).tolist()
    elif config.kind == "target_task":
        task = config.target_task
        if task not in table.task_names:
            raise SplitError(f"split.target_task: {task!r} is not a task of the table ({', '.join(table.task_names)})")
        labelled = table.frame[task].notna().to_numpy()
        if labelled.sum() < 3:
            raise SplitError(f"split.target_task: only {int(labelled.sum())} rows are labelled for {task!r}")
        cand = all_rows[labelled]
        order = group_order(table, group_of, by, config.seed, among=labelled)
        test_g, val_g, _ = _assign(group_of, cand, [config.test_fraction, config.val_fraction], order,
                                   weight_rows=labelled)
        info["target_task"] = task
    else:  # pragma: no cover - guarded by SplitConfig
        raise SplitError(f"unknown split kind {config.kind!r}")
    in_test = np.isin(group_of, test_g)
    in_val = np.isin(group_of, val_g) & ~in_test
    split = Split(all_rows[~in_test & ~in_val], all_rows[in_val], all_rows[in_test], config.kind, config.seed, info)
    check_split(split, table, by)
    return split


def check_split(split: Split, table: MaterialTable, group_by: str | None = None) -> None:
    """Raise :class:`SplitError` if parts overlap, leave rows out, index outside the table, or (with
    ``group_by``, default: the one the split was drawn with) put one group on two sides.

    For ``target_task`` splits also checks that val/test rows are labelled for the target task wherever a
    group is entirely unlabelled (an unlabelled group never takes a val/test place).
    """
    n = len(table)
    parts = split.parts()
    seen = np.zeros(n, dtype=np.int64)
    for name, rows in parts.items():
        rows = np.asarray(rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise SplitError(f"split part {name!r} indexes outside the table of {n} rows")
        if len(np.unique(rows)) != len(rows):
            raise SplitError(f"split part {name!r} lists a row twice")
        seen[rows] += 1
    if (seen > 1).any():
        ids = table.frame["material_id"].to_numpy()[seen > 1][:5].tolist()
        raise SplitError(f"split leak: materials in two parts: {ids}")
    if (seen == 0).any():
        ids = table.frame["material_id"].to_numpy()[seen == 0][:5].tolist()
        raise SplitError(f"split leaves {int((seen == 0).sum())} rows out, e.g. {ids}")
    by = group_by or split.info.get("group_by", "row")
    group_of = groups(table, by)
    side = np.empty(n, dtype=np.int64)
    for k, rows in enumerate(parts.values()):
        side[np.asarray(rows, dtype=np.int64)] = k
    first_side: dict[int, int] = {}
    for i, g in enumerate(group_of):
        if first_side.setdefault(int(g), int(side[i])) != side[i]:
            ids = table.frame["material_id"].to_numpy()[group_of == g][:5].tolist()
            raise SplitError(f"split leak: group ({by}) of {ids} is on two sides")
    task = split.info.get("target_task")
    if task is not None:
        labelled = table.frame[task].notna().to_numpy()
        for name in ("val", "test"):
            rows = np.asarray(parts[name], dtype=np.int64)
            groups_here = np.unique(group_of[rows])
            for g in groups_here:
                if not labelled[group_of == g].any():
                    raise SplitError(f"target-task split: {name} holds a group with no {task!r} label")


def save_split(split: Split, table: MaterialTable, path: str | Path) -> Path:
    """Write the split as JSON (material ids per part, kind, seed, info)."""
    ids = table.frame["material_id"].to_numpy()
    payload = {"kind": split.kind, "seed": split.seed, "info": split.info, "n_rows": len(table),
               **{k: ids[np.asarray(v, dtype=np.int64)].tolist() for k, v in split.parts().items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(payload, indent=0))


def check_split_settings(split: Split, config: SplitConfig, path: str | Path) -> None:
    """A split read from ``split.file`` must have been drawn with the config's split settings: a changed seed or
    fraction would otherwise be ignored silently while the run config records it. Splits written by other code
    (without the settings they were drawn with) are accepted as they are."""
    drawn = split.info.get("config")
    if not isinstance(drawn, dict):
        return
    wanted = to_dict(config)
    for key, value in wanted.items():
        if key != "file" and key in drawn and drawn[key] != value:
            raise SplitError(f"split.{key}: {path} was drawn with {key}={drawn[key]!r}, this config has "
                             f"{value!r}; delete the file to draw a new split, or point split.file elsewhere")


def load_split(path: str | Path, table: MaterialTable) -> Split:
    """Read a split written by :func:`save_split` and map it onto ``table`` (checked with :func:`check_split`)."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split file not found: {path}")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SplitError(f"{path}: not a split file ({err})") from None
    missing = [k for k in ("kind", "seed", *PARTS) if k not in payload]
    if missing:
        raise SplitError(f"{path}: not a split file, lacks {missing}")
    row_of = {m: i for i, m in enumerate(table.frame["material_id"].tolist())}
    parts = {}
    for name in PARTS:
        unknown = [m for m in payload[name] if m not in row_of]
        if unknown:
            raise SplitError(f"{path}: {len(unknown)} {name} materials are not in the table, e.g. {unknown[:3]}")
        parts[name] = np.asarray([row_of[m] for m in payload[name]], dtype=np.int64)
    split = Split(parts["train"], parts["val"], parts["test"], payload["kind"], int(payload["seed"]),
                  payload.get("info", {}))
    try:
        check_split(split, table)
    except SplitError as err:
        raise SplitError(f"{path}: {err}") from None
    return split


__all__ = ["Split", "SplitError", "check_split", "check_split_settings", "group_order", "groups", "load_split",
           "make_split", "save_split"]
