"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031, 2023) as a pretrained foundation encoder.

Wraps the pretrained CHGNet of the ``chgnet`` package (weights shipped in its wheel): its embeddings and
interaction blocks, not its energy MLP, forces, stress or magnetic moments. Graphs are CHGNet's own (built
from ``z``/``pos``/``cell`` by :mod:`tlgnn.models.encoders.chgnet_graphs`, cached in memory); tlgnn's edges are
not used. Weights are read with ``torch.load(..., weights_only=True)`` (no code runs), then loaded into a
``chgnet.model.CHGNet`` built from the file's ``model_args`` (``mlp_out_bias`` and ``version`` as
``CHGNet.load`` sets them). Supported elements: Z = 1..94.

Computation (CHGNet._compute up to the readout), for a structure with atoms i = 1..n:

    v_i^0 = AtomEmbedding(Z_i)                                 64 wide
    e_ij = W_e RBF(r_ij),  a_ijk = W_a Fourier(θ_jik)          bond / angle embeddings; RBF frequencies learnable
    block t = 1..T-1:  v^t = AtomConv_t(v^{t-1}, e),  e = BondConv_t(v^t, e, a),  a = AngleUpdate_t(v^t, e, a)
                       (the last AngleUpdate, t = T-1, is skipped: nothing reads its output)
    block T:           v^T = LayerNorm(AtomConv_T(v^{T-1}, e))   (readout_norm; identity for 0.2.0)

Pooling (``graph_emb``; ``node_emb`` is always v^T [N, 64]):

- ``"mean"``:   g = (1/n) Σ_i v_i^T, width 64. CHGNet's ``crystal_fea`` is the *sum* Σ_i v_i^T for the
  pretrained models (their ``mlp_first`` readout sums), so "mean" = crystal_fea / n (size-intensive).
- ``"sum"``:    g = Σ_i v_i^T, width 64: exactly CHGNet's ``crystal_fea``.
- ``"blocks"``: g = [(1/n) Σ_i v_i^1, ..., (1/n) Σ_i v_i^T], width 64·T = 256 (T = 4 blocks): the per-block
  mean atom features concatenated, block 1 first; its last 64 columns equal ``"mean"``.

Layer groups (fine-tuning freezes the first k): [input embeddings (atom embedding, bond and angle basis
expansions, bond/angle embeddings, bond weights), block 1, ..., block T (atom conv, bond conv, angle update of
that step; the last block is the last atom conv + readout_norm)]. CHGNet's angle update of step T-1 is not
kept: its output feeds nothing (step T has no bond conv), so it would be dead computation and parameters
without gradients. The energy MLP, the magnetic-moment layer and the composition model are not kept either.

Isolated atoms (no neighbour within the atom-graph cutoff) are allowed (CHGNet's converter refuses them by
default): such an atom keeps its own embedding through the residual updates.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.utils import scatter

from tlgnn.models.encoders.base import Encoder, EncoderOutput, graph_index, register_encoder
from tlgnn.models.encoders.chgnet_graphs import CHGNetGraphs, check_atomic_numbers

CHECKPOINTS = {
    "0.3.0": "0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
    "0.2.0": "0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
    "r2scan": "r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
}
"""Pretrained CHGNet versions -> file under the ``chgnet`` package's ``pretrained/`` folder."""
POOLINGS = ("mean", "sum", "blocks")
EMBEDDING_PARTS = ("atom_embedding", "bond_basis_expansion", "bond_embedding", "bond_weights_ag",
                   "bond_weights_bg", "angle_basis_expansion", "angle_embedding")


def checkpoint_path(version: str) -> Path:
    """The shipped weights file of CHGNet ``version`` ("0.3.0", "0.2.0", "r2scan")."""
    import chgnet

    if version not in CHECKPOINTS:
        raise ValueError(f"chgnet version must be one of {', '.join(CHECKPOINTS)}, got {version!r}")
    return Path(chgnet.__file__).parent / "pretrained" / CHECKPOINTS[version]


def read_checkpoint(version: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(model_args, state_dict)`` of a shipped CHGNet, read with ``weights_only=True`` (no code runs)."""
    state = torch.load(checkpoint_path(version), map_location="cpu", weights_only=True)
    return dict(state["model"]["model_args"]), state["model"]["state_dict"]


def build_chgnet(version: str, pretrained: bool = True) -> nn.Module:
    """A ``chgnet.model.CHGNet`` of ``version`` (pretrained weights, or random ones) without its composition
    model (atom reference energies, not needed for embeddings); its banner is not printed."""
    from chgnet.model import CHGNet

    model_args, state_dict = read_checkpoint(version)
    model_args.update(composition_model=None, mlp_out_bias=version == "0.2.0", version=version)
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet(**model_args)
    if pretrained:
        weights = {k: v for k, v in state_dict.items() if not k.startswith("composition_model.")}
        model.load_state_dict(weights, strict=True)
    return model


class InputEmbedding(nn.Module):
    """CHGNet's atom embedding, bond/angle basis expansions, bond/angle embeddings and bond weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name in EMBEDDING_PARTS:
            setattr(self, name, getattr(model, name))


class Block(nn.Module):
    """One CHGNet interaction step: atom conv, then bond conv and angle update (absent in the last step,
    which instead ends with ``readout_norm``, if the model has one)."""

    def __init__(self, atom_conv: nn.Module, bond_conv: nn.Module | None = None,
                 angle_update: nn.Module | None = None, readout_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.atom_conv = atom_conv
        self.bond_conv = bond_conv
        self.angle_update = angle_update
        self.readout_norm = readout_norm


def blocks_of(model: nn.Module) -> list[Block]:
    """The interaction blocks of a CHGNet, in order (see the module docstring)."""
    n = len(model.atom_conv_layers)
    bond_layers = list(getattr(model, "bond_conv_layers", None) or [None] * (n - 1))
    angle_layers = list(getattr(model, "angle_layers", None) or [None] * (n - 1))
    # the angle update of step n-1 feeds nothing (step n has no bond conv): left out, so every kept parameter
    # gets a gradient (DDP needs that) and no time is spent on it
    if n >= 2:
        angle_layers[n - 2] = None
    blocks = [Block(model.atom_conv_layers[t], bond_layers[t], angle_layers[t]) for t in range(n - 1)]
    blocks.append(Block(model.atom_conv_layers[n - 1], readout_norm=model.readout_norm))
    return blocks


@register_encoder("chgnet")
class CHGNetEncoder(Encoder):
    """Pretrained CHGNet embeddings (see the module docstring for the maths and the layer groups).

    Options: ``version`` ("0.3.0" MPtrj PBE/PBE+U, "r2scan" transfer-learned on MP r2SCAN, "0.2.0"),
    ``pooling`` ("mean" 64 | "sum" 64 | "blocks" 256 wide), ``pretrained`` (True; False: random weights, same
    architecture, for tests of the training plumbing), ``graph_cache_size`` (converted CHGNet graphs kept, while the encoder trains, in
    memory, least recently used evicted; 0 disables the cache; 20,000 MP-like crystals take about 0.4 GB).
    ``pretrained`` and ``graph_cache_size`` do not change the function of a loaded checkpoint
    (``layout_options``: a checkpoint's weights replace the initial ones).

    Graphs are converted on the host; on an accelerator ``forward`` copies ``z``/``pos``/``cell`` to the host
    (a synchronisation) to find them. ``prepare_batch`` converts (and caches) them before the transfer.
    """

    layout_options = ("pretrained", "graph_cache_size")

    def __init__(self, version: str = "0.3.0", pooling: str = "mean", pretrained: bool = True,
                 graph_cache_size: int = 20_000) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"chgnet pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        model = build_chgnet(version, bool(pretrained))
        self.version, self.pooling = version, pooling
        self.atom_graph_cutoff = float(model.graph_converter.atom_graph_cutoff)
        self.bond_graph_cutoff = float(model.graph_converter.bond_graph_cutoff)
        self.embed = InputEmbedding(model)
        self.blocks = nn.ModuleList(blocks_of(model))
        model.graph_converter.set_isolated_atom_response("ignore")
        self.graphs = CHGNetGraphs(model.graph_converter, int(graph_cache_size))
        width = int(model.atom_fea_dim)
        self.node_dim = width
        self.out_dim = width * len(self.blocks) if pooling == "blocks" else width

    def layer_groups(self) -> list[nn.Module]:
        return [self.embed, *self.blocks]

    def prepare_batch(self, batch: Any) -> Any:
        """Host-side checks (atomic numbers 1..94, ``ValueError`` otherwise) and CHGNet graph conversion into
        the cache; tlgnn's edges are left as they are (CHGNet does not read them)."""
        check_atomic_numbers(batch.z)
        if self.graphs.cache.max_size and self.training:  # else the forward pass converts them
            self.graphs.graphs(batch)
        return batch

    def interact(self, g: Any) -> list[torch.Tensor]:
        """Atom features [N, 64] after each block of a ``chgnet.model.model.BatchedGraph`` ``g``."""
        e = self.embed
        atom = e.atom_embedding(g.atomic_numbers - 1)  # row 0 is H
        bond = e.bond_embedding(g.bond_bases_ag)
        weights_ag = e.bond_weights_ag(g.bond_bases_ag)
        weights_bg = e.bond_weights_bg(g.bond_bases_bg)
        has_angles = len(g.angle_bases) != 0
        angle = e.angle_embedding(g.angle_bases) if has_angles else None
        per_block = []
        for block in self.blocks:
            atom = block.atom_conv(atom_feas=atom, bond_feas=bond, bond_weights=weights_ag,
                                   atom_graph=g.batched_atom_graph, directed2undirected=g.directed2undirected)
            if has_angles and block.bond_conv is not None:
                bond = block.bond_conv(atom_feas=atom, bond_feas=bond, bond_weights=weights_bg,
                                       angle_feas=angle, bond_graph=g.batched_bond_graph)
                if block.angle_update is not None:
                    angle = block.angle_update(atom_feas=atom, bond_feas=bond, angle_feas=angle,
                                               bond_graph=g.batched_bond_graph)
            if block.readout_norm is not None:
                atom = block.readout_norm(atom)
            per_block.append(atom)
        return per_block

    def forward(self, batch: Any) -> EncoderOutput:
        from chgnet.model.model import BatchedGraph

        device = batch.pos.device
        graphs = self.graphs.on_device(self.graphs.graphs(batch, keep=self.training), device)
        g = BatchedGraph.from_graphs(graphs, bond_basis_expansion=self.embed.bond_basis_expansion,
                                     angle_basis_expansion=self.embed.angle_basis_expansion)
        per_block = self.interact(g)
        index, num_graphs = graph_index(batch)
        last = per_block[-1]
        if self.pooling == "blocks":
            pooled = scatter(torch.cat(per_block, dim=1), index, dim=0, dim_size=num_graphs, reduce="mean")
        else:
            pooled = scatter(last, index, dim=0, dim_size=num_graphs, reduce=self.pooling)
        return EncoderOutput(node_emb=last, graph_emb=pooled)
