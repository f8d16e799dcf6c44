"""Errors raised while reading structures."""

from __future__ import annotations

from tlgnn.errors import TlgnnError


class StructureReadError(TlgnnError):
    """A structure could not be read or failed validation.

    Attributes:
        path: file the structure came from (``None`` for in-memory input; for inline text, the ``name`` given).
        reason: what is wrong, in words a user can act on.
        block: CIF data block, extxyz frame, JSON list entry or in-memory id within ``path`` (``None`` if the
            file holds a single structure).

    ``str(err)`` reads ``"<path>[<block>]: <reason>"`` (parts that are ``None`` are left out).
    """

    def __init__(self, path: str | None, reason: str, block: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        self.block = block
        super().__init__(path, reason, block)

    @property
    def location(self) -> str:
        """``"<path>[<block>]"``, ``"<path>"``, ``"<block>"`` or ``"<structure>"``."""
        if self.path is not None:
            return f"{self.path}[{self.block}]" if self.block is not None else self.path
        return self.block if self.block is not None else "<structure>"

    def at(self, path: str | None, block: str | None = None) -> StructureReadError:
        """Copy of this error (same class) located at ``path`` / ``block``."""
        return type(self)(path, self.reason, block)

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"

    def __reduce__(self):  # picklable across process pools, keeps the subclass
        return (type(self), (self.path, self.reason, self.block))


class DisorderedStructureDropped(StructureReadError):
    """Raised by ``check_structure(..., disordered="drop")``; readers list it under ``skipped``."""
