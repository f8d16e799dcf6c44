"""The data layer's errors: a bad source (:class:`SourceError`) and an alignment that cannot proceed
(:class:`AlignmentError`). Both are :class:`tlgnn.errors.DataError` s (and ``ValueError`` s) whose message is one
line naming the source or file."""

from __future__ import annotations

from tlgnn.errors import DataError


class SourceError(DataError, ValueError):
    """A problem with a source's declaration or contents: names the source, the field and the row (if any)."""

    def __init__(self, source: str, field: str | None, reason: str, row: int | str | None = None):
        self.source, self.field, self.reason, self.row = source, field, reason, row
        where = f"source {source!r}"
        if field:
            where += f", field {field!r}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {reason}")


class AlignmentError(DataError, ValueError):
    """Alignment cannot proceed (e.g. duplicates with policy ``error``); names the source and rows."""


__all__ = ["AlignmentError", "SourceError"]
