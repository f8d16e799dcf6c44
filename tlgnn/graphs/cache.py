"""On-disk graph cache: content-keyed, append-only packs of concatenated arrays.

Layout (see docs/graphs.md)::

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
import math
import mmap as mmap_module
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
import xxhash
from torch_geometric.data import Batch, Data

from tlgnn.graphs.batching import RowSelection, collate_graphs
from tlgnn.graphs.builder import CrystalGraphBuilder, GraphArrays, fast_data, structure_arrays

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

PACK_FORMAT_VERSION = 1
PACK_PREFIX = "pack-"
_ARRAYS = ("z", "pos", "cell", "edge_index", "edge_vec", "edge_dist", "cell_offset", "node_ptr", "edge_ptr")
_KEY_DECIMALS = 6


class GraphCacheWarning(UserWarning):
    """A cache pack was unreadable or corrupt and has been moved aside (its graphs are rebuilt)."""


class CorruptPackError(Exception):
    """A pack failed verification; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


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


def _checksum(arr: np.ndarray) -> str:
    return xxhash.xxh3_64_hexdigest(memoryview(np.ascontiguousarray(arr)).cast("B"))


# ---------------------------------------------------------------------------------------------------- packs
def _file_checksum(path: Path, offset: int, nbytes: int, chunk: int = 16 * 2**20) -> str:
    """xxh3-64 of ``nbytes`` bytes of ``path`` from ``offset``, read in chunks (equals ``_checksum`` of the array)."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        handle.seek(offset)
        left = nbytes
        while left > 0:
            block = handle.read(min(chunk, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def write_pack(directory: Path, keys: Sequence[str], graphs: Sequence[GraphArrays]) -> Path:
    """Write ``graphs`` (with content ``keys``) as a new pack in ``directory``; atomic rename; returns its path."""
    if len(keys) != len(graphs):
        raise ValueError(f"write_pack: {len(keys)} keys for {len(graphs)} graphs")
    directory = Path(directory)
    n_nodes = np.fromiter((len(g.z) for g in graphs), dtype=np.int64, count=len(graphs))
    n_edges = np.fromiter((g.edge_index.shape[1] for g in graphs), dtype=np.int64, count=len(graphs))
    offsets = np.concatenate([g.cell_offset for g in graphs]) if graphs else np.zeros((0, 3), np.int64)
    span = int(np.abs(offsets).max()) if len(offsets) else 0
    offset_dtype = np.int8 if span < 2**7 else np.int16 if span < 2**15 else np.int32
    arrays = {
        "z": np.concatenate([g.z for g in graphs]).astype(np.uint8) if graphs else np.zeros(0, np.uint8),
        "pos": np.concatenate([g.pos for g in graphs]) if graphs else np.zeros((0, 3), np.float32),
        "cell": np.concatenate([g.cell for g in graphs]) if graphs else np.zeros((0, 3, 3), np.float32),
        "edge_index": (np.concatenate([g.edge_index for g in graphs], axis=1) if graphs else np.zeros((2, 0))).astype(
            np.int32
        ),
        "edge_vec": np.concatenate([g.edge_vec for g in graphs]) if graphs else np.zeros((0, 3), np.float32),
        "edge_dist": np.concatenate([g.edge_dist for g in graphs]) if graphs else np.zeros(0, np.float32),
        "cell_offset": offsets.astype(offset_dtype),
        "node_ptr": np.concatenate([[0], np.cumsum(n_nodes)]).astype(np.int64),
        "edge_ptr": np.concatenate([[0], np.cumsum(n_edges)]).astype(np.int64),
    }
    name = f"{PACK_PREFIX}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp = directory / f".tmp-{name}"
    tmp.mkdir(parents=True)
    try:
        meta_arrays = {}
        for key, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            np.save(tmp / f"{key}.npy", arr)
            meta_arrays[key] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "xxh3_64": _checksum(arr)}
        meta = {
            "format_version": PACK_FORMAT_VERSION,
            "num_graphs": len(graphs),
            "num_nodes": int(n_nodes.sum()),
            "num_edges": int(n_edges.sum()),
            "keys": list(keys),
            "arrays": meta_arrays,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        final = directory / name
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class Pack:
    """One verified, read-only pack.

    ``mmap=False`` reads the arrays into RAM. ``mmap=True`` keeps them on disk: the files are memory-mapped
    to check them, and each graph is then read with positioned reads (``os.preadv``) into fresh arrays, so
    the process's resident memory stays flat however large the pack and however many graphs are read
    (random access through a mapping would leave every touched page, often a large folio, in the RSS).
    Where ``os.preadv`` is missing (Windows), items are copied out of the mapping instead.
    """

    def __init__(self, path: Path, keys: list[str], arrays: dict[str, np.ndarray], mmap: bool):
        self.path, self.keys, self.mmap = Path(path), keys, mmap
        self._np = arrays
        node_ptr = np.array(arrays["node_ptr"], dtype=np.int64)
        edge_ptr = np.array(arrays["edge_ptr"], dtype=np.int64)
        self.node_ptr, self.edge_ptr = node_ptr.tolist(), edge_ptr.tolist()
        # per-graph first node/edge and counts as arrays, for whole-batch gathers (tlgnn.graphs.batching)
        self.node_offsets, self.node_counts = node_ptr[:-1], np.diff(node_ptr)
        self.edge_offsets, self.edge_counts = edge_ptr[:-1], np.diff(edge_ptr)
        # in-RAM packs serve items as views into torch tensors of the final dtypes (like PyG InMemoryDataset),
        # made on the first item: whole-batch gathers (tlgnn.graphs.batching) read the compact arrays directly
        self._t: dict[str, torch.Tensor] | None = None
        self._views: list[tuple[torch.Tensor, ...]] | None = None
        # mmap packs: name -> (file, data offset, dtype, shape) for positioned reads; fds opened per process
        self._files: dict[str, tuple[Path, int, np.dtype, tuple[int, ...]]] = {}
        self._fds: dict[str, int] = {}
        self._fd_pid = 0

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def open(cls, path: Path, mmap: bool = True, verify: bool = True) -> "Pack":
        """Open and check a pack (meta, files, shapes, dtypes, checksums); raises ``CorruptPackError``."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except FileNotFoundError:
            raise CorruptPackError(path, "meta.json missing") from None
        except (OSError, ValueError) as err:
            raise CorruptPackError(path, f"meta.json unreadable ({err})") from None
        try:
            if meta["format_version"] != PACK_FORMAT_VERSION:
                raise CorruptPackError(path, f"pack format {meta['format_version']} != {PACK_FORMAT_VERSION}")
            keys, n_graphs, spec = list(meta["keys"]), int(meta["num_graphs"]), meta["arrays"]
            n_nodes, n_edges = int(meta["num_nodes"]), int(meta["num_edges"])
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptPackError(path, f"meta.json malformed ({err!r})") from None
        if len(keys) != n_graphs:
            raise CorruptPackError(path, f"meta.json has {len(keys)} keys for {n_graphs} graphs")
        expected_lead = {"z": n_nodes, "pos": n_nodes, "cell": n_graphs, "edge_vec": n_edges, "edge_dist": n_edges,
                         "cell_offset": n_edges, "node_ptr": n_graphs + 1, "edge_ptr": n_graphs + 1}
        arrays, files, maps = {}, {}, []
        for name in _ARRAYS:
            file = path / f"{name}.npy"
            if name not in spec:
                raise CorruptPackError(path, f"meta.json lacks array {name!r}")
            try:
                arr = _read_npy(file, spec[name], mmap)
            except FileNotFoundError:
                raise CorruptPackError(path, f"{name}.npy missing") from None
            except (OSError, ValueError, EOFError) as err:
                raise CorruptPackError(path, f"{name}.npy unreadable or truncated ({err})") from None
            if arr.dtype.str != spec[name]["dtype"] or list(arr.shape) != list(spec[name]["shape"]):
                raise CorruptPackError(
                    path, f"{name}.npy is {arr.dtype.str}{list(arr.shape)}, meta says "
                    f"{spec[name]['dtype']}{spec[name]['shape']}"
                )
            lead = arr.shape[1] if name == "edge_index" else arr.shape[0]
            want = n_edges if name == "edge_index" else expected_lead[name]
            if lead != want:
                raise CorruptPackError(path, f"{name}.npy has {lead} rows, expected {want}")
            if verify:
                # mmap packs are checked by streaming the file: hashing through the mapping would leave the whole
                # pack resident in this process (peak RSS = pack size)
                mapped = isinstance(arr, np.memmap)
                digest = _file_checksum(file, int(arr.offset), arr.nbytes) if mapped else _checksum(arr)
                if digest != spec[name]["xxh3_64"]:
                    raise CorruptPackError(path, f"{name}.npy checksum mismatch (corrupted data)")
            if mmap and isinstance(arr, np.memmap):
                files[name] = (file, int(arr.offset), arr.dtype, tuple(arr.shape))
                maps.append(arr._mmap)
            arrays[name] = arr.view(np.ndarray) if mmap else arr  # plain ndarray view: slicing is 3x faster
        for ptr, total in (("node_ptr", n_nodes), ("edge_ptr", n_edges)):
            p = arrays[ptr]
            if len(p) and (p[0] != 0 or p[-1] != total or np.any(np.diff(p) < 0)):
                raise CorruptPackError(path, f"{ptr}.npy is not a valid offset array")
        pack = cls(path, keys, arrays, mmap)
        if hasattr(os, "preadv") and len(files) == len(_ARRAYS):
            pack._files = files
        _drop_pages(maps)  # hand back the few pages the checks above touched (offset arrays, headers)
        return pack

    def arrays_at(self, i: int) -> GraphArrays:
        """Graph ``i`` as numpy ``GraphArrays`` (copies, contract dtypes)."""
        a, n0, n1, e0, e1 = self._np, *self._bounds(i)
        if self._files:
            edge_index = np.empty((2, e1 - e0), self._files["edge_index"][2])
            total = self._files["edge_index"][3][1]
            self._read_into("edge_index", edge_index[0], e0)
            self._read_into("edge_index", edge_index[1], total + e0)
            return GraphArrays(
                z=self._rows("z", n0, n1).astype(np.int64), pos=self._rows("pos", n0, n1),
                cell=self._rows("cell", i, i + 1), edge_index=edge_index.astype(np.int64),
                edge_vec=self._rows("edge_vec", e0, e1), edge_dist=self._rows("edge_dist", e0, e1),
                cell_offset=self._rows("cell_offset", e0, e1).astype(np.int64),
            )
        return GraphArrays(
            z=a["z"][n0:n1].astype(np.int64), pos=np.array(a["pos"][n0:n1]), cell=np.array(a["cell"][i : i + 1]),
            edge_index=a["edge_index"][:, e0:e1].astype(np.int64), edge_vec=np.array(a["edge_vec"][e0:e1]),
            edge_dist=np.array(a["edge_dist"][e0:e1]), cell_offset=a["cell_offset"][e0:e1].astype(np.int64),
        )

    def dtype(self, name: str) -> np.dtype:
        """Stored dtype of array ``name`` (compact: ``z`` uint8, ``edge_index`` int32, ``cell_offset`` int8-32)."""
        return self._np[name].dtype

    def take_rows(self, name: str, rows: RowSelection, out: np.ndarray | None = None) -> np.ndarray:
        """The ``rows`` of array ``name`` (first axis; ``edge_index``: its edge axis), in order, stored dtype.

        ``out``: a C-contiguous array of the stored dtype and the result's shape to fill (returned). In-RAM packs
        copy a slice (one run) or gather with ``np.take`` (~3x faster than ``a[idx]`` for these arrays); on-disk
        packs read each run of adjacent rows with one positioned read, so nothing stays mapped in the RSS.
        """
        axis = 1 if name == "edge_index" else 0
        if not self._files:  # in RAM (or no os.preadv)
            source = self._np[name]
            if isinstance(rows.index, slice):
                part = source[:, rows.index] if axis else source[rows.index]
                if out is None:
                    return part.copy()
                out[...] = part
                return out
            return np.take(source, rows.index, axis=axis, out=out)
        _, offset, dtype, shape = self._files[name]
        if out is None:
            out = np.empty((2, rows.total) if axis else (rows.total, *shape[1:]), dtype)
        row_bytes = (1 if axis else math.prod(shape[1:])) * dtype.itemsize
        firsts = [offset + first * row_bytes for first in rows.run_starts]
        sizes = [n * row_bytes for n in rows.run_lengths]
        fd, preadv = self._fd(name), os.preadv
        got = wanted = 0
        for part, second in ((0, 0), (1, shape[-1] * dtype.itemsize)) if axis else ((None, 0),):
            buffer = memoryview(out if part is None else out[part]).cast("B")
            at = 0
            for first, size in zip(firsts, sizes):  # the hot loop of on-disk batches: keep it bare
                got += preadv(fd, [buffer[at : at + size]], first + second)
                at += size
            wanted += at
        if got != wanted:
            raise OSError(f"{self._files[name][0]}: short read ({got} of {wanted} bytes); was the pack changed "
                          "after opening?")
        return out

    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (first axis) of array ``name``, read from disk into a new array."""
        _, _, dtype, shape = self._files[name]
        out = np.empty((stop - start, *shape[1:]), dtype)
        self._read_into(name, out, start * (out[0].size if len(out) else 0))
        return out

    def _read_into(self, name: str, out: np.ndarray, first: int) -> None:
        """Fill the contiguous ``out`` from array ``name``, starting at flat element ``first``."""
        if out.nbytes == 0:
            return
        file, offset, dtype, _ = self._files[name]
        got = os.preadv(self._fd(name), [memoryview(out).cast("B")], offset + first * dtype.itemsize)
        if got != out.nbytes:
            raise OSError(f"{file}: short read ({got} of {out.nbytes} bytes); was the pack changed after opening?")

    def _fd(self, name: str) -> int:
        """This process's read-only descriptor of array ``name``'s file (opened on first use)."""
        if self._fd_pid != os.getpid():  # descriptors are per process (DataLoader workers fork)
            self._fds, self._fd_pid = {}, os.getpid()
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(self._files[name][0], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return fd

    def __del__(self) -> None:
        if getattr(self, "_fd_pid", 0) == os.getpid():
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"], state["_fd_pid"] = {}, 0  # descriptors do not travel to another process
        return state

    def data(self, i: int) -> Data:
        """Graph ``i`` as ``Data`` (contract fields; see docs/architecture.md)."""
        n0, n1, e0, e1 = self._bounds(i)
        if self.mmap:
            g = self.arrays_at(i)
            return fast_data({
                "z": torch.from_numpy(g.z), "pos": torch.from_numpy(g.pos), "cell": torch.from_numpy(g.cell),
                "edge_index": torch.from_numpy(g.edge_index), "edge_vec": torch.from_numpy(g.edge_vec),
                "edge_dist": torch.from_numpy(g.edge_dist), "cell_offset": torch.from_numpy(g.cell_offset),
                "num_nodes": n1 - n0,
            })
        if self._t is None:
            self._t = _as_torch(self._np)
        t = self._t
        if self._views is None:  # split every array into per-graph views once (C loop; 2x faster than slicing)
            nodes = torch.tensor(self.node_ptr[1:-1], dtype=torch.long)
            edges = torch.tensor(self.edge_ptr[1:-1], dtype=torch.long)
            self._views = list(zip(
                t["z"].tensor_split(nodes), t["pos"].tensor_split(nodes), t["cell"].split(1),
                t["edge_index"].tensor_split(edges, dim=1), t["edge_vec"].tensor_split(edges),
                t["edge_dist"].tensor_split(edges), t["cell_offset"].tensor_split(edges),
            ))
        z, pos, cell, edge_index, edge_vec, edge_dist, cell_offset = self._views[i]
        return fast_data({
            "z": z, "pos": pos, "cell": cell, "edge_index": edge_index, "edge_vec": edge_vec,
            "edge_dist": edge_dist, "cell_offset": cell_offset, "num_nodes": n1 - n0,
        })

    def _bounds(self, i: int) -> tuple[int, int, int, int]:
        return self.node_ptr[i], self.node_ptr[i + 1], self.edge_ptr[i], self.edge_ptr[i + 1]


def _read_npy(file: Path, spec: dict, mmap: bool) -> np.ndarray:
    """``np.load(file)`` (memory-mapped when ``mmap``) for an array ``write_pack`` wrote, without numpy's
    ``literal_eval`` of the header: the header must be exactly what ``np.save`` writes for the dtype and shape
    that meta.json records (else this falls back to ``np.load``, whose result is then checked against meta.json)."""
    dtype, shape = np.dtype(spec["dtype"]), tuple(int(n) for n in spec["shape"])
    with open(file, "rb") as handle:
        lead = handle.read(10)
        if len(lead) == 10 and lead[:8] == b"\x93NUMPY\x01\x00":
            size = int.from_bytes(lead[8:10], "little")
            header = handle.read(size).decode("latin1").rstrip()
            expected = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
            if header == expected:
                offset = 10 + size
                count = int(np.prod(shape, dtype=np.int64))
                if count == 0:  # numpy cannot map an empty region
                    return np.zeros(shape, dtype=dtype)
                if mmap:
                    if os.fstat(handle.fileno()).st_size < offset + count * dtype.itemsize:
                        raise ValueError(f"file holds fewer than the {count} values its header declares")
                    return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)
                data = np.fromfile(handle, dtype=dtype, count=count)
                if data.size != count:
                    raise EOFError(f"{data.size} of {count} values (truncated)")
                return data.reshape(shape)
    return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)


def _drop_pages(maps: Iterable[mmap_module.mmap]) -> None:
    """Unmap the resident pages of read-only file mappings from this process (``madvise(MADV_DONTNEED)``)."""
    if not hasattr(mmap_module, "MADV_DONTNEED"):
        return
    for m in maps:
        try:
            m.madvise(mmap_module.MADV_DONTNEED)
        except (OSError, ValueError):  # closed or unsupported mapping: nothing resident to drop
            pass


def _as_torch(a: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    long = ("z", "edge_index", "cell_offset")
    return {k: torch.from_numpy(np.asarray(a[k], dtype=np.int64) if k in long else np.array(a[k]))
            for k in _ARRAYS[:7]}


class GraphStore(Sequence):
    """A sequence of graphs backed by packs; ``store[i]`` builds the ``Data`` lazily from the arrays."""

    def __init__(self, packs: Sequence[Pack], refs: Sequence[tuple[int, int]] | None = None,
                 pack_of: np.ndarray | None = None, index: np.ndarray | None = None):
        """Item k is graph ``refs[k] = (pack number, position)`` (default: every graph of every pack in order);
        or give the two columns as int64 arrays ``pack_of`` and ``index``."""
        self.packs = list(packs)
        if pack_of is not None and index is not None:
            self._pack_of_np = np.asarray(pack_of, dtype=np.int64)
            self._index_np = np.asarray(index, dtype=np.int64)
        else:
            if refs is None:
                refs = [(p, i) for p, pack in enumerate(self.packs) for i in range(len(pack))]
            self._pack_of_np = np.fromiter((r[0] for r in refs), dtype=np.int64, count=len(refs))
            self._index_np = np.fromiter((r[1] for r in refs), dtype=np.int64, count=len(refs))
        if self._pack_of_np.shape != self._index_np.shape:
            raise ValueError("GraphStore: pack_of and index must have the same length")
        self._lists: tuple[list[int], list[int]] | None = None  # Python lists for per-item access, made on demand

    @property
    def _pack_of(self) -> list[int]:
        return self._item_lists()[0]

    @property
    def _index(self) -> list[int]:
        return self._item_lists()[1]

    def _item_lists(self) -> tuple[list[int], list[int]]:
        if self._lists is None:
            self._lists = (self._pack_of_np.tolist(), self._index_np.tolist())
        return self._lists

    @classmethod
    def open(cls, paths: Iterable[Path], mmap: bool = True, verify: bool = True) -> "GraphStore":
        """All graphs of the given pack directories (duplicate keys: the first pack wins)."""
        packs = [Pack.open(Path(p), mmap=mmap, verify=verify) for p in paths]
        seen: set[str] = set()
        pack_of, index = [], []
        for p, pack in enumerate(packs):
            n = len(pack.keys)
            if seen.isdisjoint(pack.keys) and len(set(pack.keys)) == n:  # the usual case, without per-key Python
                keep = np.arange(n, dtype=np.int64)
                seen.update(pack.keys)
            else:
                rows = []
                for i, key in enumerate(pack.keys):
                    if key not in seen:
                        seen.add(key)
                        rows.append(i)
                keep = np.asarray(rows, dtype=np.int64)
            pack_of.append(np.full(len(keep), p, dtype=np.int64))
            index.append(keep)
        empty = np.zeros(0, dtype=np.int64)
        return cls(packs, pack_of=np.concatenate(pack_of) if pack_of else empty,
                   index=np.concatenate(index) if index else empty)

    def __len__(self) -> int:
        return len(self._index_np)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"GraphStore index {i} out of range for {len(self)} graphs")
        return self.packs[self._pack_of[i]].data(self._index[i])

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pack number, position in that pack)`` of each item in ``indices`` (non-negative, in range)."""
        return self._pack_of_np[indices], self._index_np[indices]

    def batch(self, indices: Sequence[int] | np.ndarray, **extra) -> Batch:
        """Items ``indices`` as one ``Batch`` (equal to ``Batch.from_data_list([self[i] for i in indices])``),
        gathered from the packs without per-graph ``Data``; ``extra``: per-graph fields, see
        :func:`tlgnn.graphs.batching.collate_graphs`."""
        return collate_graphs(self, indices, extra)

    @property
    def keys(self) -> list[str]:
        """Content key of each item."""
        return [self.packs[p].keys[i] for p, i in zip(self._pack_of, self._index)]


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
        settings_file = self.directory / "settings.json"
        if not settings_file.exists():
            tmp = self.directory / f".settings-{uuid.uuid4().hex}.json"
            tmp.write_text(json.dumps(builder.settings, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, settings_file)
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
