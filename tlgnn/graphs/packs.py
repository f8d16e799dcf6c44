"""Graph packs: the on-disk format of the graph cache, and a sequence of graphs backed by packs.

A pack is a directory of concatenated arrays (``write_pack``)::

    pack-<time>-<pid>-<uuid>/
        meta.json                            keys, counts, dtype/shape and xxh3-64 checksum of each array
        z.npy pos.npy cell.npy edge_index.npy edge_vec.npy edge_dist.npy cell_offset.npy
        node_ptr.npy edge_ptr.npy           graph g = nodes node_ptr[g]:node_ptr[g+1], edges edge_ptr[g]:...

written under a temporary name and renamed into place (atomic), never modified afterwards. ``Pack.open`` checks
it (meta, files, shapes, dtypes, checksums; ``CorruptPackError`` names what is wrong) and serves graphs in RAM or
by positioned reads from disk; ``GraphStore`` is a sequence of graphs over several packs (items or whole
batches, ``GraphStore.batch``). ``tlgnn.graphs.cache.GraphCache`` manages packs by content key.
"""

from __future__ import annotations

import json
import math
import mmap as mmap_module
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import xxhash
from torch_geometric.data import Batch, Data

from tlgnn.errors import TlgnnError
from tlgnn.graphs.batching import RowSelection, collate_graphs
from tlgnn.graphs.builder import GraphArrays, fast_data

PACK_FORMAT_VERSION = 1
PACK_PREFIX = "pack-"
_ARRAYS = ("z", "pos", "cell", "edge_index", "edge_vec", "edge_dist", "cell_offset", "node_ptr", "edge_ptr")


class CorruptPackError(TlgnnError):
    """A pack failed verification; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")

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
