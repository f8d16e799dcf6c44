"""Encoder interface: a PyG batch of crystal graphs -> node and graph embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tlgnn.models.registry import Registry

ENCODERS = Registry("encoder")
"""Registered encoders by name; ``ENCODERS[name](**options)`` builds one."""


def register_encoder(name: str):
    """Class decorator registering an :class:`Encoder` subclass under ``name``."""
    return ENCODERS.register(name)


def build_encoder(name: str, **options: Any) -> "Encoder":
    """Build a registered encoder; an unknown name or option raises ``ValueError`` with close matches."""
    return ENCODERS.build(name, **options)


@dataclass
class EncoderOutput:
    """What every encoder returns.

    ``node_emb``: float [N, d_node], one row per atom of the batch.
    ``graph_emb``: float [B, d], one row per structure; ``d == encoder.out_dim``. This is the transfer seam
    every head reads.
    """

    node_emb: torch.Tensor
    graph_emb: torch.Tensor


def graph_index(batch: Any) -> tuple[torch.Tensor, int]:
    """``(batch vector [N], number of graphs)`` for a PyG ``Batch`` or a single ``Data``."""
    index = getattr(batch, "batch", None)
    if index is None:
        index = torch.zeros(batch.z.shape[0], dtype=torch.long, device=batch.z.device)
        return index, 1
    num_graphs = getattr(batch, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(index.max()) + 1 if index.numel() else 0
    return index, int(num_graphs)


EDGE_FIELDS = ("edge_index", "edge_vec", "edge_dist", "cell_offset")
"""Per-edge fields of the graph contract (docs/architecture.md); ``edge_index`` is [2, E], the others [E, ...]."""


def within_cutoff(cutoff: float, edge_index: torch.Tensor, dist: torch.Tensor, *per_edge: torch.Tensor):
    """``(edge_index, dist, *per_edge)`` restricted to edges with ``dist <= cutoff`` (Å).

    CPU tensors are filtered here. On an accelerator, filtering (a data-dependent shape) would stop the host
    until the GPU catches up on every forward pass, so batches are filtered on the host before the transfer
    (:meth:`Encoder.prepare_batch`) and this only asserts, asynchronously, that no edge is longer.
    """
    if not dist.numel():
        return (edge_index, dist, *per_edge)
    if dist.device.type != "cpu":
        torch._assert_async(dist.max() <= cutoff)
        return (edge_index, dist, *per_edge)
    if float(dist.max()) <= cutoff:
        return (edge_index, dist, *per_edge)
    keep = dist <= cutoff
    return (edge_index[:, keep], dist[keep], *(t[keep] for t in per_edge))


def drop_long_edges(batch: Any, cutoff: float) -> Any:
    """Remove edges longer than ``cutoff`` (Å) from every per-edge field of a ``Data``/``Batch``, in place.

    A ``Batch`` keeps its per-graph edge slices consistent (``to_data_list`` still works).
    """
    # host-side checks use numpy (``.cpu()`` is a no-op on host tensors): single-threaded, so they stay cheap while
    # DataLoader workers keep the cores busy (torch's intra-op threads would contend with them)
    dist = batch.edge_dist.cpu().numpy()
    if not dist.size or dist.max() <= cutoff:
        return batch
    keep = torch.from_numpy(dist <= cutoff).to(batch.edge_dist.device)
    for key in EDGE_FIELDS:
        value = getattr(batch, key, None)
        if value is not None:
            batch[key] = value[:, keep] if key == "edge_index" else value[keep]
    slices = getattr(batch, "_slice_dict", None)
    if slices is not None and getattr(batch, "batch", None) is not None:
        per_graph = torch.bincount(batch.batch[batch.edge_index[0]], minlength=batch.num_graphs)
        bounds = torch.cat([per_graph.new_zeros(1), per_graph.cumsum(0)])
        for key in EDGE_FIELDS:
            if key in slices:
                slices[key] = bounds
    return batch


def uniform_degree(edge_index: torch.Tensor, num_nodes: int) -> int | None:
    """``k`` when the edges are grouped by centre atom in order, exactly ``k`` per atom (edges ``k*i .. k*i+k-1``
    leave atom ``i``), else ``None``. k-nearest graphs (CGCNN: 12 within 8 Å) usually are; then a sum over
    each atom's edges is a dense ``view(N, k, d).sum(1)``, CGCNN's original fixed-neighbour layout, with no
    scatter. Reads ``edge_index``: call it on the host batch (``Encoder.prepare_batch`` does).
    """
    n_edges = edge_index.shape[1]
    if num_nodes < 1 or n_edges == 0 or n_edges % num_nodes:
        return None
    k = n_edges // num_nodes
    centre = edge_index[0].cpu().numpy().reshape(num_nodes, k)  # numpy, as in drop_long_edges
    return k if bool((centre == np.arange(num_nodes)[:, None]).all()) else None


class Encoder(nn.Module):
    """Base class of crystal-graph encoders.

    Subclasses set ``out_dim`` (width of ``graph_emb``), implement ``forward(batch) -> EncoderOutput`` and
    ``layer_groups()``: the encoder's modules in input-to-output order (input embedding first, then each
    interaction block, then the post-pooling layer if any) covering every parameter exactly once.
    Fine-tuning freezes the first k groups. ``layout_options``: options that choose how the same function is
    computed (e.g. CGCNN's ``edge_projection``); a checkpoint's encoder may be loaded with other values of them.

    Option names are one vocabulary across encoders: ``hidden_channels`` (width of the per-atom features in the
    interaction blocks), ``num_layers`` (number of interaction blocks), ``out_channels`` (width of ``graph_emb``,
    = ``out_dim``), ``cutoff`` (Å). ``renamed_options`` maps an encoder's older option names to these: they stay
    readable (old checkpoints, old configs; :meth:`tlgnn.models.registry.Registry.canonical`).
    """

    out_dim: int
    layout_options: tuple[str, ...] = ()
    renamed_options: dict[str, str] = {}

    def forward(self, batch: Any) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_groups(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare_batch(self, batch: Any) -> Any:
        """Host-side input checks before ``batch`` moves to an accelerator; returns the batch to use.

        Checks the atomic numbers against every atom-input table of the encoder (``ValueError`` naming them)
        and drops edges longer than the encoder's ``cutoff`` (Å), if it has one; sets ``batch.uniform_degree``
        (:func:`uniform_degree`, which encoders may use for dense per-atom sums). The forward pass does the
        same on CPU tensors, but on a GPU it only asserts (checking there would synchronise the host on every
        step), so code that feeds GPU batches calls this first: ``TransferModule`` does it in
        ``on_before_batch_transfer``, ``Predictor`` before ``.to(device)``.
        """
        from tlgnn.models.encoders.atoms import AtomInput

        for module in self.modules():
            if isinstance(module, AtomInput):
                module.check(batch.z)
        cutoff = getattr(self, "cutoff", None)
        if cutoff is not None:
            batch = drop_long_edges(batch, float(cutoff))
        batch.uniform_degree = uniform_degree(batch.edge_index, int(batch.z.shape[0]))
        return batch
