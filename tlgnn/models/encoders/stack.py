"""Several encoders side by side on the same crystals: their graph embeddings concatenated.

.. math::

    \\mathbf{h}_G = [\\,\\mathbf{h}^{(1)}_G \\,\\|\\, \\mathbf{h}^{(2)}_G \\,\\|\\, \\dots\\,] \\in
    \\mathbb{R}^{d_1 + d_2 + \\dots}

Each encoder reads the same batch (a CGCNN its tlgnn graph, CHGNet the positions and cell it builds its own graph
from) and keeps its own weights: ``model.init_from`` takes one checkpoint per stacked encoder (``null`` for one
that brings its own pretrained weights, e.g. ``chgnet``). The usual use is frozen: two pretrained encoders that
learned different things (CHGNet: MP energies and forces; the shipped CGCNN: PBE gaps, formation energies, Fermi
levels, magnetisations) embed every crystal once into the embedding cache and a head reads both::

    model:
      encoder: {name: stack, encoders: [{name: chgnet, pooling: blocks},
                                        {name: cgcnn, hidden_channels: 128, num_layers: 4, out_channels: 256}]}
      init_from: [null, data/pretrained/cgcnn_mp_dense_wide.ckpt]
      finetune: {freeze: encoder}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tlgnn.models.encoders.base import Encoder, EncoderOutput, build_encoder, register_encoder


@register_encoder("stack")
class StackedEncoder(Encoder):
    """Encoders run on the same batch, graph embeddings concatenated in the order given ([B, Σ dᵢ]).

    Args:
        encoders: at least two encoder specs, each ``{name: <registered encoder>, **options}`` (no ``stack``
            inside a stack).

    ``layer_groups()`` aligns the encoders at their output ends: the last group holds every encoder's last group,
    so freezing the first k groups always leaves each encoder's top layers trainable first. ``node_emb``: the
    encoders' per-atom features side by side ([N, Σ d_node,i]; the same atoms in the same order).
    """

    def __init__(self, encoders: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        if not isinstance(encoders, (list, tuple)) or len(encoders) < 2:
            raise ValueError("stack: 'encoders' must be a list of at least two encoder specs ({name: ..., ...})")
        built = []
        for i, spec in enumerate(encoders):
            if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
                raise ValueError(f"stack: encoders[{i}] must be a mapping with a 'name', got {spec!r}")
            if spec["name"] == "stack":
                raise ValueError(f"stack: encoders[{i}] is itself a stack; list its encoders directly")
            built.append(build_encoder(spec["name"], **{k: v for k, v in spec.items() if k != "name"}))
        self.encoders = nn.ModuleList(built)  # not ``members``: that name marks an ensemble's copies
        self.out_dim = sum(int(e.out_dim) for e in built)

    def forward(self, batch: Any) -> EncoderOutput:
        outs = [encoder(batch) for encoder in self.encoders]
        nodes = [o.node_emb for o in outs]
        node_emb = None if any(n is None for n in nodes) else torch.cat(nodes, dim=1)
        return EncoderOutput(node_emb=node_emb,  # type: ignore[arg-type]
                             graph_emb=torch.cat([o.graph_emb for o in outs], dim=1))

    def layer_groups(self) -> list[nn.Module]:
        groups = [encoder.layer_groups() for encoder in self.encoders]
        depth = max(len(g) for g in groups)
        return [nn.ModuleList([g[j - (depth - len(g))] for g in groups if j >= depth - len(g)])
                for j in range(depth)]

    def prepare_batch(self, batch: Any) -> Any:
        for encoder in self.encoders:
            batch = encoder.prepare_batch(batch)
        return batch
