"""Files that must never be half-written or silently damaged: unique temporary names and checksum sidecars.

``temp_path(path)`` names a temporary file beside ``path`` that no other process uses (pid and a random part), to
be moved onto ``path`` with ``os.replace`` once complete; ``write_text_atomic(path, text)`` does that for text.
``write_checksum(path)`` records the xxh3-64 digest of a finished file in ``<path>.xxh3``; ``verify_checksum(path)``
raises :class:`CorruptFileError` naming the file if it no longer matches. The graph packs keep per-array checksums of their own (``tlgnn.graphs.packs``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import xxhash

from tlgnn.errors import TlgnnError

CHECKSUM_SUFFIX = ".xxh3"


class CorruptFileError(TlgnnError, ValueError):
    """A file on disk is damaged or unreadable: names the file and what is wrong."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def temp_path(path: str | Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call (``.<name>.tmp-<pid>-<random>``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


STALE_TEMP_S = 6 * 3600
"""A temporary file or folder untouched this long (s) was left by a killed process: it may be removed."""


def remove_stale_temps(folder: str | Path, pattern: str = ".*tmp-*",
                       older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove temporary files/folders matching ``pattern`` in ``folder`` that were last modified more than
    ``older_than_s`` ago (a process killed while writing left them; a live writer touches its own constantly).
    Returns what was removed."""
    import shutil
    import time

    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    limit = time.time() - older_than_s
    for path in folder.glob(pattern):
        try:
            if path.lstat().st_mtime < limit:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
        except OSError:  # another process removed it first
            continue
    return removed


def file_digest(path: str | Path, chunk: int = 16 * 2**20) -> str:
    """xxh3-64 hex digest of a file's bytes, read in chunks."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: str | Path) -> Path:
    return Path(f"{path}{CHECKSUM_SUFFIX}")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a unique temporary file moved into place: readers see the old file or
    the whole new one, never part of it."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_checksum(path: str | Path) -> Path:
    """Record the digest of the finished file ``path`` in ``<path>.xxh3`` (written atomically)."""
    return write_text_atomic(checksum_path(path), file_digest(path) + "\n")


def verify_checksum(path: str | Path) -> bool:
    """Raise :class:`CorruptFileError` if ``path`` differs from its recorded digest; return whether a digest
    verified it. Without a ``.xxh3`` file (written by an older tlgnn, or by a process killed between the file and
    its digest) there is nothing to compare: the file is accepted and ``False`` returned (callers that must say
    so, say so)."""
    recorded = checksum_path(path)
    if not recorded.is_file():
        return False
    expected = recorded.read_text().strip()
    actual = file_digest(path)
    if actual != expected:
        raise CorruptFileError(path, f"checksum mismatch (recorded {expected}, file {actual}): the file was "
                                     "damaged or changed after it was written")
    return True


__all__ = ["CorruptFileError", "checksum_path", "file_digest", "remove_stale_temps", "temp_path", "verify_checksum",
           "write_checksum", "write_text_atomic"]
