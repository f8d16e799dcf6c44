"""Bond-angle triplets built on the fly from a crystal graph (vectorised, no Python loops over graphs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Triplets:
    """Pairs of short edges sharing their centre atom i: (i -> j, i -> k), j != k as edges.

    ``edges``: long [E_s], ids (into the graph's edges) of the edges shorter than the three-body cutoff.
    ``a``, ``b``: long [T], indices into ``edges`` of the edge being updated (i -> j) and the other edge
    (i -> k); every unordered pair appears in both orders.
    ``cos``: float [T], cosine of the bond angle j-i-k.
    """

    edges: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    cos: torch.Tensor


def angle_triplets(
    edge_index: torch.Tensor,
    edge_vec: torch.Tensor,
    edge_dist: torch.Tensor,
    num_nodes: int,
    cutoff: float,
) -> Triplets:
    """All angle triplets whose two edges are shorter than ``cutoff`` (Å).

    Restricting triplets to short edges (the three-body cutoff of M3GNet) keeps their number about
    ``n_short * (n_short - 1)`` per atom instead of ``max_neighbors**2``. Periodic images are distinct
    edges, so an atom bonded to two images of the same neighbour gets that angle too.
    """
    short = torch.nonzero(edge_dist < cutoff).flatten()
    centre = edge_index[0, short]
    order = torch.argsort(centre, stable=True)
    short, centre = short[order], centre[order]
    counts = torch.bincount(centre, minlength=num_nodes)
    start = torch.cumsum(counts, 0) - counts  # first position of each atom's block in `short`
    deg = counts[centre]  # block size of each short edge's centre
    device = edge_index.device
    a = torch.repeat_interleave(torch.arange(short.numel(), device=device), deg)
    first = torch.cumsum(deg, 0) - deg
    position = torch.arange(a.numel(), device=device) - torch.repeat_interleave(first, deg)
    b = start[centre][a] + position
    keep = a != b
    a, b = a[keep], b[keep]
    vec = edge_vec[short]
    dist = edge_dist[short]
    cos = (vec[a] * vec[b]).sum(-1) / (dist[a] * dist[b])
    return Triplets(edges=short, a=a, b=b, cos=cos.clamp(-1.0, 1.0))
