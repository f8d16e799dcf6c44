"""Running an encoder over batches of graphs, and embeddings of many materials through the cache.

:func:`encoded_batches` is the loop every inference path shares (``tlgnn.training.inference.predict_batches``
builds on it): the encoder's host-side checks, the move to the device, the encoder. :func:`cached_embeddings`
gives the graph embeddings of a dataset's materials, computing only those the :class:`EmbeddingCache` lacks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tlgnn.embeddings.cache import EmbeddingCache, encoder_identity
from tlgnn.models.composition import NUM_ELEMENT_COLUMNS, counts_of
from tlgnn.models.encoders.base import EncoderOutput


def encoded_batches(model: Any, loader: Iterable[Any], device: torch.device | str = "cpu"
                    ) -> Iterator[tuple[Any, EncoderOutput]]:
    """``(batch on device, encoder output)`` for every batch of ``loader``, without gradients.

    ``model`` is a :class:`~tlgnn.models.TransferModel` (stored embeddings pass through its ``encode``) or a bare
    :class:`~tlgnn.models.encoders.Encoder`; each batch first gets the encoder's host-side checks
    (``prepare_batch``), as in training. The caller sets eval mode.
    """
    encode = getattr(model, "encode", model)
    with torch.no_grad():
        for batch in loader:
            batch = model.prepare_batch(batch).to(device)
            yield batch, encode(batch)


def embed_loader(encoder: Any, loader: Iterable[Any], device: torch.device | str = "cpu",
                 progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(graph embeddings float32 [n, d], element counts float32 [n, 119])`` of every graph of ``loader``, in
    order, with ``encoder`` in eval mode on ``device`` (its mode and device are restored afterwards).
    ``progress(n)`` is called with the number of graphs of each batch done."""
    was_training = encoder.training
    home = next(encoder.parameters(), torch.empty(0)).device
    encoder.eval().to(device)
    embeddings, counts = [], []
    try:
        for batch, out in encoded_batches(encoder, loader, device):
            embeddings.append(out.graph_emb.float().cpu().numpy())
            counts.append(counts_of(batch).cpu().numpy())
            if progress is not None:
                progress(int(batch.num_graphs))
    finally:
        encoder.train(was_training).to(home)
    width = int(getattr(encoder, "out_dim", 0))
    return (np.concatenate(embeddings) if embeddings else np.zeros((0, width), np.float32),
            np.concatenate(counts) if counts else np.zeros((0, NUM_ELEMENT_COLUMNS), np.float32))


def cached_embeddings(encoder: Any, spec: Mapping[str, Any], graph: Mapping[str, Any], keys: Sequence[str],
                      loader_for: Any, cache_root: str | Path, device: torch.device | str = "cpu",
                      verbose: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Graph embeddings [n, d] and element counts [n, 119] of the materials with content ``keys``.

    Those in the cache (identity of ``encoder``, ``spec``, ``graph``; see :mod:`tlgnn.embeddings.cache`) are read;
    the others are computed with ``encoder`` over ``loader_for(positions)`` (a loader of the graphs of
    ``keys[positions]``, in that order) and stored as one new shard. A ``stack`` encoder's embedding is its
    encoders' cached embeddings side by side: each is cached under its own identity, so one shared with a
    single-encoder run (CHGNet, a shipped CGCNN) is computed once for both.
    """
    if spec.get("name") == "stack":
        parts = [cached_embeddings(member, member_spec, graph, keys, loader_for, cache_root, device, verbose)
                 for member, member_spec in zip(encoder.encoders, spec["encoders"])]
        return np.concatenate([p[0] for p in parts], axis=1), parts[0][1]
    identity = encoder_identity(encoder, spec, graph)
    cache = EmbeddingCache(cache_root, identity, {"encoder": dict(spec), "graph": dict(graph)})
    embeddings, counts, found = cache.lookup(keys)
    missing = np.flatnonzero(~found)
    if verbose:
        print(f"embeddings: {int(found.sum())}/{len(keys)} from the cache {cache.folder}"
              + (f", computing {len(missing)}" if len(missing) else ""), file=sys.stderr)
    if len(missing):
        unique: dict[str, int] = {}
        for i in missing.tolist():  # one computation per distinct structure, at its first row
            unique.setdefault(keys[i], i)
        first = np.asarray(list(unique.values()), dtype=np.int64)
        # a bar on a terminal, as the graph cache and the file reader show theirs
        bar = tqdm(total=len(first), desc="embedding", unit="structure", disable=not (verbose and sys.stderr.isatty()))
        try:
            new, new_counts = embed_loader(encoder, loader_for(first), device, bar.update)
        finally:
            bar.close()
        cache.add([keys[i] for i in first], new, new_counts)
        if embeddings is None:
            embeddings = np.zeros((len(keys), new.shape[1]), dtype=np.float32)
        by_key = {keys[i]: j for j, i in enumerate(first)}
        rows = np.asarray([by_key[keys[i]] for i in missing], dtype=np.int64)
        embeddings[missing] = new[rows]
        counts[missing] = new_counts[rows]
    if embeddings is None:  # no keys, nothing cached
        embeddings = np.zeros((0, int(getattr(encoder, "out_dim", 0))), np.float32)
    return embeddings, counts


__all__ = ["cached_embeddings", "embed_loader", "encoded_batches"]
