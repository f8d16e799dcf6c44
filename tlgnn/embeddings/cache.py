"""On-disk cache of graph embeddings: one folder per encoder identity, append-only checksummed shards.

Layout::

    root/<identity[:16]>/encoder.json     the encoder's config, graph settings, width, full identity digest
    root/<identity[:16]>/shard-<time>-<pid>-<random>.npz        keys [n] (structure content keys),
                                          embeddings float32 [n, d], element_counts float32 [n, 119]
    root/<identity[:16]>/shard-....npz.xxh3                     its xxh3-64 digest
    root/<identity[:16]>/corrupt/         shards that failed verification, moved aside (recomputed)

The identity (:func:`encoder_identity`) is a sha256 of the encoder's config, the graph settings its inputs are built
with, the cache format and every tensor of the encoder's ``state_dict``: other weights or settings mean another
folder, so a stale embedding is never served. A shard is written under a temporary name and its digest recorded
before it is renamed into place (atomic); a shard without a digest, or whose bytes differ from it, is moved aside
with a warning. Shards are read with ``allow_pickle=False``: nothing in the cache can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlgnn.models.composition import NUM_ELEMENT_COLUMNS
from tlgnn.models.encoders.base import ENCODERS
from tlgnn.models.registry import full_options
from tlgnn.utils.files import (CorruptFileError, checksum_path, remove_stale_temps, temp_path, verify_checksum,
                               write_checksum, write_text_atomic)

CACHE_FORMAT = 1
"""Version of the shard layout and of what an embedding means; part of every identity."""


class EmbeddingCacheWarning(UserWarning):
    """A shard of the embedding cache was unreadable or corrupt and has been moved aside (its rows are recomputed)."""


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, any shape), for hashing."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encoder_identity(encoder: torch.nn.Module, spec: Mapping[str, Any], graph: Mapping[str, Any]) -> str:
    """sha256 hex digest naming what an embedding depends on: ``spec`` (the encoder config ``{name, **options}``,
    defaults filled in, so ``{name: chgnet}`` and ``{name: chgnet, version: "0.3.0"}`` are one encoder; the encoder's
    ``layout_options`` left out), ``graph``
    (the graph builder settings of its inputs), :data:`CACHE_FORMAT` and the encoder's weights."""
    h = hashlib.sha256(b"tlgnn-embedding\0")
    layout = set(getattr(type(encoder), "layout_options", ()))  # how, not what, is computed (cache sizes ...)
    full = {k: v for k, v in full_options(ENCODERS, spec).items() if k not in layout}
    h.update(json.dumps({"encoder": full, "graph": dict(graph), "format": CACHE_FORMAT},
                        sort_keys=True, default=str).encode())
    for name, value in sorted(encoder.state_dict().items()):
        h.update(f"\0{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        h.update(tensor_bytes(value))
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings of one encoder identity under ``root``.

    Args:
        root: the cache root (tlgnn uses ``<data.cache_dir>/embeddings``).
        identity: :func:`encoder_identity` of the encoder.
        describe: JSON-able description written once to ``encoder.json`` (encoder config, graph settings, width).
    """

    def __init__(self, root: str | Path, identity: str, describe: Mapping[str, Any] | None = None):
        self.identity = identity
        self.folder = Path(root).expanduser() / identity[:16]
        self.describe = dict(describe or {})

    # ---------------------------------------------------------------------------------------------- reading
    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    def _move_aside(self, shard: Path, reason: str) -> None:
        corrupt = self.folder / "corrupt"
        corrupt.mkdir(exist_ok=True)
        for path in (shard, checksum_path(shard)):
            if path.exists():
                shutil.move(str(path), str(corrupt / path.name))
        warnings.warn(f"embedding cache: {shard} is unusable ({reason}); moved to {corrupt}, its embeddings will be "
                      "computed again", EmbeddingCacheWarning, stacklevel=3)

    def _read_shard(self, shard: Path) -> dict[str, np.ndarray] | None:
        try:
            if not verify_checksum(shard):
                raise CorruptFileError(shard, "no recorded digest (a writer was killed, or it was copied in)")
            with np.load(shard, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in ("keys", "embeddings", "element_counts")}
        except (CorruptFileError, OSError, ValueError, KeyError) as err:
            self._move_aside(shard, str(err))
            return None
        n = len(arrays["keys"])
        if arrays["embeddings"].shape[0] != n or arrays["element_counts"].shape != (n, NUM_ELEMENT_COLUMNS):
            self._move_aside(shard, "array lengths disagree")
            return None
        return arrays

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """``(embeddings [n, d] or None if nothing is cached, element_counts [n, 119], found bool [n])`` for
        ``keys`` (a key may repeat); rows not found are zeros."""
        wanted: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            wanted.setdefault(key, []).append(i)
        found = np.zeros(len(keys), dtype=bool)
        embeddings: np.ndarray | None = None
        counts = np.zeros((len(keys), NUM_ELEMENT_COLUMNS), dtype=np.float32)
        for shard in self._shards():
            arrays = self._read_shard(shard)
            if arrays is None:
                continue
            if embeddings is None:
                embeddings = np.zeros((len(keys), arrays["embeddings"].shape[1]), dtype=np.float32)
            for j, key in enumerate(arrays["keys"].tolist()):
                rows = [i for i in wanted.get(key, ()) if not found[i]]
                if rows:
                    embeddings[rows] = arrays["embeddings"][j]
                    counts[rows] = arrays["element_counts"][j]
                    found[rows] = True
        return embeddings, counts, found

    # ---------------------------------------------------------------------------------------------- writing
    def add(self, keys: Sequence[str], embeddings: np.ndarray, element_counts: np.ndarray) -> Path:
        """Store a new shard (atomically, digest first); returns its path."""
        keys = [str(k) for k in keys]
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        element_counts = np.ascontiguousarray(element_counts, dtype=np.float32)
        if embeddings.shape[0] != len(keys) or element_counts.shape != (len(keys), NUM_ELEMENT_COLUMNS):
            raise ValueError(f"{len(keys)} keys, {embeddings.shape[0]} embeddings, element counts "
                             f"{element_counts.shape}: they must agree (counts [n, {NUM_ELEMENT_COLUMNS}])")
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)
        if self.describe and not (self.folder / "encoder.json").is_file():
            info = {**self.describe, "identity": self.identity, "dim": int(embeddings.shape[1])}
            write_text_atomic(self.folder / "encoder.json", json.dumps(info, indent=1, sort_keys=True, default=str))
        name = f"shard-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}.npz"
        shard = self.folder / name
        tmp = temp_path(shard)
        try:
            with open(tmp, "wb") as handle:
                np.savez(handle, keys=np.asarray(keys, dtype=str), embeddings=embeddings,
                         element_counts=element_counts)
            os.replace(write_checksum(tmp), checksum_path(shard))  # the digest of these bytes, recorded first
            os.replace(tmp, shard)
        finally:
            tmp.unlink(missing_ok=True)
        return shard


__all__ = ["CACHE_FORMAT", "EmbeddingCache", "EmbeddingCacheWarning", "encoder_identity", "tensor_bytes"]
