"""A fitted tree ensemble stored as flat tensors (buffers) and evaluated in torch, without the library that grew it.

The trees of a LightGBM booster (``booster.dump_model()``, numerical splits only) become node arrays:

- ``feature`` [N] (int64, input column), ``threshold`` [N] (float64), ``left`` / ``right`` [N] (int64 child: a
  node index ``>= 0``, or ``~j`` (i.e. ``-1 - j``) for leaf ``j``), ``missing`` [N] (int8: 0 none, 1 zero, 2 NaN:
  LightGBM's ``missing_type``), ``default_left`` [N] (bool: where a missing value goes);
- ``leaf_value`` [L] (float64, shrinkage applied), ``root`` [T] (int64 per tree: its root node, or ``~j`` for a
  tree that is a single leaf ``j``), ``depth`` (int64, the deepest leaf over all trees), ``init_score`` (float64,
  added to the sum of the trees; LightGBM folds its own starting value into the first tree, so this is 0 for
  boosters trained here), ``num_features`` (int64, the input width the trees were grown on).

A split follows LightGBM's numerical decision exactly (``decision_type "<="``): a NaN input becomes 0 unless the
node's missing type is NaN; a missing value (NaN for type NaN, ``|x| <= 1e-35`` for type zero) goes to the
default side; otherwise ``x <= threshold`` goes left. Inputs and thresholds are compared in float64, so the
decisions are LightGBM's own for any float32 or float64 input.

Every buffer exists from construction with size 0 (an unfitted ensemble); loading a ``state_dict`` with fitted
trees resizes them first, so a checkpoint loads into a freshly built model.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

#: ``missing`` codes, as LightGBM's ``missing_type`` names them.
MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}
ZERO_THRESHOLD = 1e-35
_BUFFERS = {
    "feature": torch.int64, "threshold": torch.float64, "left": torch.int64, "right": torch.int64,
    "missing": torch.int8, "default_left": torch.bool, "leaf_value": torch.float64, "root": torch.int64,
}
_SCALARS = {"depth": torch.int64, "init_score": torch.float64, "num_features": torch.int64}


def lightgbm_arrays(dump: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Node arrays (see the module docstring) of a LightGBM ``dump_model()`` dict of a single-output regressor.

    Categorical splits, linear trees and multi-class models raise ``ValueError``.
    """
    if int(dump.get("num_tree_per_iteration", 1)) != 1:
        raise ValueError("lightgbm_arrays: only single-output models (num_tree_per_iteration 1) are supported")
    nodes: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right", "missing", "default_left")}
    leaves: list[float] = []
    roots: list[int] = []
    depth = 0
    for tree in dump["tree_info"]:
        if tree.get("is_linear"):
            raise ValueError("lightgbm_arrays: linear trees are not supported")
        root, tree_depth = _add_tree(tree["tree_structure"], nodes, leaves)
        roots.append(root)
        depth = max(depth, tree_depth)
    return {
        "feature": np.asarray(nodes["feature"], dtype=np.int64),
        "threshold": np.asarray(nodes["threshold"], dtype=np.float64),
        "left": np.asarray(nodes["left"], dtype=np.int64),
        "right": np.asarray(nodes["right"], dtype=np.int64),
        "missing": np.asarray(nodes["missing"], dtype=np.int8),
        "default_left": np.asarray(nodes["default_left"], dtype=bool),
        "leaf_value": np.asarray(leaves, dtype=np.float64),
        "root": np.asarray(roots, dtype=np.int64),
        "depth": np.asarray(depth, dtype=np.int64),
        "init_score": np.asarray(0.0, dtype=np.float64),
        "num_features": np.asarray(int(dump["max_feature_idx"]) + 1, dtype=np.int64),
    }


def _add_tree(structure: Mapping[str, Any], nodes: dict[str, list], leaves: list[float]) -> tuple[int, int]:
    """Append one tree's nodes (depth-first, iteratively) and leaves; ``(root reference, depth)``."""

    def reference(item: Mapping[str, Any]) -> int:
        if "leaf_value" in item:
            leaves.append(float(item["leaf_value"]))
            return ~(len(leaves) - 1)
        if item.get("decision_type", "<=") != "<=":
            raise ValueError(f"lightgbm_arrays: split decision {item.get('decision_type')!r} (categorical) "
                             "is not supported; only numerical '<=' splits")
        for key, value in (("feature", int(item["split_feature"])), ("threshold", float(item["threshold"])),
                           ("left", 0), ("right", 0), ("missing", MISSING_TYPES[item.get("missing_type", "None")]),
                           ("default_left", bool(item.get("default_left", True)))):
            nodes[key].append(value)
        return len(nodes["feature"]) - 1

    root = reference(structure)
    depth = 0
    stack = [(structure, root, 0)] if root >= 0 else []
    while stack:
        item, index, level = stack.pop()
        depth = max(depth, level + 1)
        for side in ("left", "right"):
            child = item[f"{side}_child"]
            ref = reference(child)
            nodes[side][index] = ref
            if ref >= 0:
                stack.append((child, ref, level + 1))
    return root, depth


class TreeEnsemble(nn.Module):
    """Sum of regression trees held in buffers; ``forward(x [B, f]) -> [B]`` (float64)."""

    def __init__(self) -> None:
        super().__init__()
        for name, dtype in _BUFFERS.items():
            self.register_buffer(name, torch.zeros(0, dtype=dtype))
        for name, dtype in _SCALARS.items():
            self.register_buffer(name, torch.zeros((), dtype=dtype))

    @property
    def num_trees(self) -> int:
        """Number of trees (0: not fitted)."""
        return int(self.root.numel())

    def set_arrays(self, arrays: Mapping[str, Any]) -> None:
        """Replace the trees with ``arrays`` (as :func:`lightgbm_arrays` returns), on the ensemble's device."""
        missing = set(_BUFFERS) | set(_SCALARS)
        missing -= set(arrays)
        if missing:
            raise ValueError(f"TreeEnsemble.set_arrays: missing arrays {sorted(missing)}")
        device = self.root.device
        for name, dtype in {**_BUFFERS, **_SCALARS}.items():
            self._buffers[name] = torch.as_tensor(np.asarray(arrays[name]), dtype=dtype).to(device).clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        for name, buf in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _apply(self, fn, recurse: bool = True):
        """Moves between devices like any module, but the trees keep their dtypes: ``.half()``/``.to(dtype)`` of a
        model leaves thresholds and leaf values in float64 (the decisions must stay LightGBM's)."""
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def forward(self, x: torch.Tensor, chunk_cells: int = 1 << 22) -> torch.Tensor:
        """Sum of the trees' leaf values for each row of ``x`` [B, num_features] (float64 [B]).

        Rows are evaluated in chunks of about ``chunk_cells`` (rows x trees) to bound memory.
        """
        if self.num_trees == 0:
            raise RuntimeError("TreeEnsemble: no trees (the model has not been fitted)")
        if x.dim() != 2 or x.shape[1] != int(self.num_features):
            raise ValueError(f"TreeEnsemble: input has shape {tuple(x.shape)}, the trees were grown on "
                             f"{int(self.num_features)} features")
        x = x.to(device=self.root.device, dtype=torch.float64)
        rows, tables = max(1, chunk_cells // self.num_trees), self._tables()
        parts = [self._leaves(x[i:i + rows], tables) for i in range(0, x.shape[0], rows)]
        leaves = torch.cat(parts) if parts else torch.zeros(0, self.num_trees, dtype=torch.int64, device=x.device)
        return self.leaf_value[leaves].sum(1) + self.init_score

    def _tables(self) -> dict[str, Any]:
        """Node tables for evaluation: every leaf j becomes node ``N + j`` that loops to itself, so each step
        moves every (row, tree) one level down without masks; ``nan_right``: where a NaN input goes (LightGBM:
        NaN is 0 for missing type none, the default side otherwise)."""
        n, leaves = self.feature.numel(), self.leaf_value.numel()
        device = self.root.device
        loops = torch.arange(n, n + leaves, device=device)

        def node(ref: torch.Tensor) -> torch.Tensor:
            return torch.where(ref >= 0, ref, n + torch.bitwise_not(ref))

        nan_left = torch.where(self.missing == 0, self.threshold >= 0.0, self.default_left)
        tables = {
            "feature": torch.cat([self.feature, torch.zeros(leaves, dtype=torch.int64, device=device)]),
            "threshold": torch.cat([self.threshold, torch.full((leaves,), math.inf, dtype=torch.float64,
                                                               device=device)]),
            "nan_right": torch.cat([~nan_left, torch.zeros(leaves, dtype=torch.bool, device=device)]),
            "children": torch.stack([torch.cat([node(self.left), loops]), torch.cat([node(self.right), loops])],
                                    1).reshape(-1),
            "root": node(self.root), "first_leaf": n, "zero_right": None,
        }
        if bool((self.missing == 1).any()):  # missing type zero: |x| <= 1e-35 (and NaN) take the default side
            zero = torch.cat([self.missing == 1, torch.zeros(leaves, dtype=torch.bool, device=device)])
            tables["zero"] = zero
            tables["zero_right"] = torch.cat([~self.default_left, torch.zeros(leaves, dtype=torch.bool,
                                                                                device=device)])
        return tables

    def _leaves(self, x: torch.Tensor, tables: dict[str, Any]) -> torch.Tensor:
        """Leaf index [b, T] each row reaches in each tree: one vectorised step per level of depth over the
        (row, tree) cells still inside a tree; cells that reached their leaf are set aside every other step."""
        rows, trees, width = x.shape[0], tables["root"].numel(), x.shape[1]
        flat_x = x.reshape(-1)
        leaf_of = tables["root"].repeat(rows)  # flat [b * T], row-major
        cell = torch.arange(leaf_of.numel(), device=x.device)
        offset = torch.div(cell, trees, rounding_mode="floor") * width  # where each cell's row starts in flat_x
        node = leaf_of.clone()
        has_nan = bool(x.isnan().any())
        for step in range(int(self.depth)):
            value = flat_x.index_select(0, tables["feature"].index_select(0, node).add_(offset))
            right = value > tables["threshold"].index_select(0, node)
            if has_nan:
                right |= value.isnan() & tables["nan_right"].index_select(0, node)
            if tables["zero_right"] is not None:
                absent = tables["zero"].index_select(0, node) & ((value.abs() <= ZERO_THRESHOLD) | value.isnan())
                right = torch.where(absent, tables["zero_right"].index_select(0, node), right)
            node = tables["children"].index_select(0, node.mul_(2).add_(right))
            if step % 2 == 1:
                leaf_of.index_put_((cell,), node)
                inside = (node < tables["first_leaf"]).nonzero().view(-1)
                if inside.numel() == 0:
                    break
                cell, node, offset = cell.index_select(0, inside), node.index_select(0, inside), \
                    offset.index_select(0, inside)
        leaf_of.index_put_((cell,), node)
        return (leaf_of - tables["first_leaf"]).view(rows, trees)
