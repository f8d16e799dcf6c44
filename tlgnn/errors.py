"""The base classes of tlgnn's exceptions.

Every exception class tlgnn defines derives from :class:`TlgnnError` (and keeps its standard base, e.g.
``ConfigError`` is also a ``ValueError``), so a caller can catch everything tlgnn reports about its input with
one ``except TlgnnError``. The ``tlgnn`` command line does exactly that, in one place (``tlgnn.cli.main``), and
prints the message as one line.

This module imports nothing from tlgnn, so any module may import it.
"""

from __future__ import annotations


class TlgnnError(Exception):
    """A problem tlgnn detected and explains in its message (a bad file, config value, table or checkpoint)."""


class DataError(TlgnnError):
    """The data a config points to is wrong (a label source, the alignment, a split); the CLI says "data error"."""


__all__ = ["DataError", "TlgnnError"]
