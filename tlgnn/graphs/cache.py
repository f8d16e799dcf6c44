"""On-disk graph cache: content-keyed, append-only packs of concatenated arrays.

Layout (see docs/graphs.md; the pack format is in ``tlgnn.graphs.packs``)::

    root/<settings-hash>/settings.json      builder settings (hash = sha256 of their canonical JSON)
    root/<settings-hash>/pack-<time>-<pid>-<uuid>/
        meta.json                            keys, counts, dtype/shape and xxh3-64 checksum of each array
        z.npy pos.npy cell.npy edge_index.npy edge_vec.npy edge_dist.npy cell_offset.npy
        node_ptr.npy edge_ptr.npy           graph g = nodes node_ptr[g]:node_ptr[g+1], edges edge_ptr[g]:...
    root/<settings-hash>/corrupt/            packs that failed verification, moved aside

A pack is written under a temporary name and renamed into place (atomic), and never modified afterwards.
Writers never share a file: each writes its own pack, so concurrent processes cannot corrupt each other.
Readers merge all packs; for a key present in several packs the first (sorted by name) wins.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch_geometric.data import Data

from tlgnn.graphs.builder import CrystalGraphBuilder, GraphArrays, structure_arrays
from tlgnn.graphs.packs import PACK_PREFIX, CorruptPackError, GraphStore, Pack, write_pack
from tlgnn.utils.files import remove_stale_temps, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

_KEY_DECIMALS = 6


class GraphCacheWarning(UserWarning):
    """A cache pack was unreadable or corrupt and has been moved aside (its graphs are rebuilt)."""

def structure_key(structure: "Structure") -> str:
    """Content hash (sha256 hex) of lattice (Å), pbc, species and fractional coordinates, rounded to 1e-6."""
    lattice = structure.lattice
    h = hashlib.sha256(b"tlgnn-structure-v1\0")
    h.update((np.round(lattice.matrix, _KEY_DECIMALS) + 0.0).astype("<f8").tobytes())
    h.update(np.asarray(lattice.pbc, dtype=np.uint8).tobytes())
    h.update("\0".join(site.species_string for site in structure).encode())
    h.update((np.round(structure.frac_coords, _KEY_DECIMALS) + 0.0).astype("<f8").tobytes())
    return h.hexdigest()


def settings_hash(settings: dict) -> str:
    """sha256 of the canonical JSON of builder settings (first 16 hex digits name the cache subdirectory)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

# ---------------------------------------------------------------------------------------------------- cache
_BUILD_BATCH = 256  # structures per CrystalGraphBuilder.build_many call (and per pool task)


def _build_batch(builder: CrystalGraphBuilder, items: list) -> list[GraphArrays | ValueError]:
    """Graphs of ``(numbers, positions, cell, pbc, name)`` items (or a ``ValueError`` each) as one batch;
    a structure's error stays in its place."""
    systems = [item if isinstance(item, ValueError) else item[:4] for item in items]
    names = [None if isinstance(item, ValueError) else item[4] for item in items]
    return builder.build_many_from_arrays(systems, names=names, on_error="return")


class GraphCache:
    """Graphs built once by ``builder`` and stored under ``root`` (one subdirectory per builder settings).

    ``mmap=True`` memory-maps the packs (a dataset need not fit in RAM; items are copied out on access);
    ``mmap=False`` reads them into RAM (items are views into shared tensors). ``pack_size``: graphs per pack.
    """

    def __init__(self, root: str | os.PathLike, builder: CrystalGraphBuilder, mmap: bool = True,
                 pack_size: int = 50_000):
        if pack_size < 1:
            raise ValueError(f"pack_size: must be >= 1, got {pack_size}")
        self.root = Path(root)
        self.builder = builder
        self.mmap = mmap
        self.pack_size = int(pack_size)
        self.settings_hash = settings_hash(builder.settings)
        self.directory = self.root / self.settings_hash[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temps(self.directory, ".tmp-*"):  # packs half-written by killed processes
            warnings.warn(f"removed {path}: a graph pack a killed process left unfinished", stacklevel=2)
        settings_file = self.directory / "settings.json"
        if not settings_file.exists():
            write_text_atomic(settings_file, json.dumps(builder.settings, indent=1, sort_keys=True) + "\n")
        self._packs: dict[str, Pack] = {}  # name -> opened pack
        self._index: dict[str, int] = {}  # key -> slot: (pack number, position) = _slot_pack/_slot_pos[slot]
        self._slot_pack: list[int] = []  # pack number (order of self._packs)
        self._slot_pos: list[int] = []
        self._slot_arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"GraphCache({str(self.directory)!r}, {self.builder!r}, packs={len(self._packs)})"

    def __len__(self) -> int:
        """Number of distinct graphs on disk (after a refresh)."""
        self.refresh()
        return len(self._index)

    def refresh(self) -> None:
        """Open packs written since the last call (by this or another process); move corrupt ones aside."""
        for path in sorted(self.directory.glob(f"{PACK_PREFIX}*")):
            if path.name in self._packs:
                continue
            try:
                pack = Pack.open(path, mmap=self.mmap)
            except CorruptPackError as err:
                self._quarantine(path, err.reason)
                continue
            number = len(self._packs)
            self._packs[path.name] = pack
            self._add_slots(number, pack.keys)

    def _add_slots(self, number: int, keys: list[str]) -> None:
        """Index the graphs of pack ``number`` (``keys`` in pack order); a key already indexed keeps its slot."""
        index, slot_pack, slot_pos = self._index, self._slot_pack, self._slot_pos
        self._slot_arrays = None
        start, n = len(slot_pos), len(keys)
        fresh = dict(zip(keys, range(start, start + n)))
        if len(fresh) == n and index.keys().isdisjoint(fresh):  # the usual case, done in C
            index.update(fresh)
            slot_pack.extend(itertools.repeat(number, n))
            slot_pos.extend(range(n))
            return
        for i, key in enumerate(keys):
            if key not in index:
                index[key] = len(slot_pos)
                slot_pack.append(number)
                slot_pos.append(i)

    def _quarantine(self, path: Path, reason: str) -> None:
        target = self.directory / "corrupt" / path.name
        try:
            target.parent.mkdir(exist_ok=True)
            os.rename(path, target)
            where = f"moved to {target}"
        except FileNotFoundError:  # another process moved it first
            where = "already moved by another process"
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            where = "deleted"
        message = f"graph cache: pack {path} is corrupt ({reason}); {where}; its graphs will be rebuilt"
        log.warning(message)
        warnings.warn(message, GraphCacheWarning, stacklevel=3)

    def get(self, structure: "Structure", key: str | None = None) -> Data:
        """The graph of one structure (built and stored if missing)."""
        return self.get_many([structure], keys=None if key is None else [key], n_jobs=1, progress=False)[0]

    def get_many(
        self,
        structures: Sequence["Structure"],
        keys: Sequence[str] | None = None,
        n_jobs: int | None = None,
        progress: bool | None = None,
    ) -> GraphStore:
        """Graphs of ``structures`` in order; missing ones are built (``n_jobs`` processes) and written as packs.

        ``keys``: precomputed ``structure_key`` values (they must be content keys: an id that can refer to a
        changed structure defeats staleness detection). ``n_jobs=None``: all available cores.
        ``progress=None``: a tqdm bar when stderr is a terminal.
        """
        if keys is None:
            keys = [structure_key(s) for s in structures]
        elif len(keys) != len(structures):
            raise ValueError(f"keys: {len(keys)} keys for {len(structures)} structures")
        self.refresh()
        lookup = self._index.get
        slots = np.fromiter(map(lookup, keys, itertools.repeat(-1)), dtype=np.int64, count=len(keys))
        absent = np.flatnonzero(slots < 0)
        if len(absent):
            missing: dict[str, int] = {}
            for n in absent.tolist():
                missing.setdefault(keys[n], n)
            self._build_and_write(structures, missing, n_jobs, progress)
            self.refresh()
            lost = [k for k in missing if k not in self._index]
            if lost:  # our own fresh pack failed verification: a disk problem, not something to hide
                raise OSError(f"graph cache {self.directory}: {len(lost)} freshly written graphs are unreadable")
            slots[absent] = [self._index[keys[n]] for n in absent.tolist()]
        if self._slot_arrays is None:
            self._slot_arrays = (np.asarray(self._slot_pack, dtype=np.int64), np.asarray(self._slot_pos, dtype=np.int64))
        slot_pack, slot_pos = self._slot_arrays
        return GraphStore(list(self._packs.values()), pack_of=slot_pack[slots], index=slot_pos[slots])

    def _build_and_write(self, structures, missing: dict[str, int], n_jobs, progress) -> None:
        """Build the ``missing`` graphs in batches (``n_jobs`` processes) and write them as packs.

        A structure that fails (disordered, isolated atom, bad values) does not cost the others: every good
        graph is written, then the first error is raised (it names the structure).
        """
        from tqdm.auto import tqdm

        items = []
        for key, n in missing.items():
            name = f"structures[{n}] (key {key[:12]})"
            try:
                items.append((*structure_arrays(structures[n], name), name))
            except ValueError as err:
                items.append(err)
        if n_jobs is None:
            n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if n_jobs < 1:
            raise ValueError(f"n_jobs: must be >= 1 or None, got {n_jobs}")
        n_jobs = min(n_jobs, max(1, len(items) // 64))  # a pool is not worth starting for a handful
        if progress is None:
            progress = sys.stderr.isatty()
        bar = tqdm(total=len(items), desc="building graphs", unit="graph", disable=not progress)
        keys = list(missing)
        errors: list[ValueError] = []
        try:
            with _maybe_pool(n_jobs) as pool:
                for start in range(0, len(items), self.pack_size):
                    chunk = items[start : start + self.pack_size]
                    size = max(16, min(_BUILD_BATCH, -(-len(chunk) // (4 * n_jobs))))
                    batches = [chunk[b : b + size] for b in range(0, len(chunk), size)]
                    built = (map(_build_batch, [self.builder] * len(batches), batches) if pool is None else
                             pool.map(_build_batch, [self.builder] * len(batches), batches))
                    graphs: list[GraphArrays] = []
                    good_keys: list[str] = []
                    at = start
                    for batch in built:
                        for graph in batch:
                            if isinstance(graph, ValueError):
                                errors.append(graph)
                            else:
                                graphs.append(graph)
                                good_keys.append(keys[at])
                            at += 1
                        bar.update(len(batch))
                    if graphs:
                        write_pack(self.directory, good_keys, graphs)
        finally:
            bar.close()
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.add_note(f"{len(errors)} of {len(items)} structures failed; the other graphs were built "
                               "and cached")
            raise first


class _maybe_pool:
    """``ProcessPoolExecutor`` for n_jobs > 1, else ``None`` (serial)."""

    def __init__(self, n_jobs: int):
        self.pool = ProcessPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else None

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        return False
