"""Encoder interface: a PyG batch of crystal graphs -> node and graph embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


class Encoder(nn.Module):
    """Base class of crystal-graph encoders.

    Subclasses set ``out_dim`` (width of ``graph_emb``), implement ``forward(batch) -> EncoderOutput`` and
    ``layer_groups()``: the encoder's modules in input-to-output order (input embedding first, then each
    interaction block, then the post-pooling layer if any) covering every parameter exactly once.
    Fine-tuning freezes the first k groups.
    """

    out_dim: int

    def forward(self, batch: Any) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_groups(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError
