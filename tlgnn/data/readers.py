"""Reading the tables a source names: CSV/TSV (delimiter sniffed), JSON records or columns, JSON lines, parquet
(``.gz`` accepted), and nested mappings ``{key: {id: value}}``. Every failure is a :class:`SourceError` naming the
source, the field and the file. Cell helpers (:func:`is_missing`, :func:`id_text`) live here too.
"""

from __future__ import annotations

import difflib
import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlgnn.data.errors import SourceError
from tlgnn.data.source_config import TableFormat

MISSING_TEXT = {"", "nan", "NaN", "NA", "N/A", "null", "None", "none"}


def infer_format(path: Path) -> TableFormat:
    """Table format from a file name (``.csv[.gz]``, ``.json[.gz]``, ``.jsonl``/``.ndjson[.gz]``, ``.parquet``)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in ((".csv", "csv"), (".tsv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "json"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt  # type: ignore[return-value]
    raise ValueError(f"cannot tell the table format of {path.name!r}; set 'format' (csv, json, jsonl, parquet)")


def open_text(path: Path):
    return gzip.open(path, "rt") if path.name.lower().endswith(".gz") else path.open()


def read_table(path: Path, fmt: TableFormat | None, source: str, field_name: str = "path",
               columns: list[str] | None = None, header: bool = True,
               notes: list[str] | None = None) -> pd.DataFrame:
    """Read a table file into a DataFrame (CSV cells as text; JSON values as parsed); errors are SourceErrors.

    CSV: the delimiter is sniffed by :func:`sniff_csv` (comma, tab, or semicolon with decimal commas, which are
    read as decimal points); ``header=False``: the CSV has no header row and ``columns`` names its columns in
    order. ``notes``: a list that gets a sentence about how the file was read when that was not the default."""
    if not path.is_file():
        raise SourceError(source, field_name, f"file not found: {path}")
    try:
        fmt = fmt or infer_format(path)
    except ValueError as err:
        raise SourceError(source, field_name, str(err)) from None
    try:
        if not header and fmt != "csv":
            raise SourceError(source, "header", f"header: false applies to CSV/TSV files; {path.name} is {fmt}")
        if fmt == "csv":
            frame = _read_csv(path, source, columns if not header else None, notes)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "jsonl":
            with open_text(path) as handle:
                records = []
                for line_no, line in enumerate(handle):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise SourceError(source, field_name, f"{path.name}: invalid JSON: {err}", row=line_no)
            frame = pd.DataFrame.from_records(records)
        else:
            with open_text(path) as handle:
                data = json.load(handle)
            if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
                frame = pd.DataFrame(data)  # column-oriented {column: [values]}
            elif isinstance(data, list):
                frame = pd.DataFrame.from_records(data)
            else:
                raise SourceError(source, field_name, f"{path.name}: expected a list of records or {{column: [...]}}; "
                                  "for {key: {id: value}} set layout: nested")
    except SourceError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure becomes a named error
        raise SourceError(source, field_name, f"cannot read {path}: {type(err).__name__}: {err}") from None
    if columns is not None and header:
        require_columns(frame, columns, source, "columns", path)
        frame = frame[list(dict.fromkeys(columns))]
    return frame.reset_index(drop=True)


DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?")
SNIFF_LINES = 20


def sniff_csv(lines: list[str], tsv_name: bool = False) -> tuple[str, bool]:
    """The delimiter of a CSV from its first ``lines``, and whether its numbers are written with decimal commas.

    Tab for ``.tsv`` names and for a first line with tabs and no commas; semicolon for a first line with
    semicolons where every comma of a semicolon-separated line sits inside a number (``mp-10182;0,758``), which
    then has a decimal comma; otherwise comma."""
    first = lines[0] if lines else ""
    if tsv_name or ("\t" in first and "," not in first):
        return "\t", False
    if ";" in first:
        fields = [f.strip() for line in lines if ";" in line for f in line.rstrip("\r\n").split(";")]
        if all("," not in f or DECIMAL_COMMA.fullmatch(f) for f in fields):
            return ";", any("," in f for f in fields)
    return ",", False


def _read_csv(path: Path, source: str, names: list[str] | None, notes: list[str] | None) -> pd.DataFrame:
    with open_text(path) as handle:
        lines = [line for _, line in zip(range(SNIFF_LINES), handle)]
    sep, decimal_comma = sniff_csv(lines, ".tsv" in path.name.lower())
    if names is None:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, header=None)
        if frame.shape[1] != len(names):
            raise SourceError(source, "columns", f"{path.name} has {frame.shape[1]} columns per row; 'columns' "
                                                 f"names {len(names)}: {names}")
        frame.columns = list(names)
    if sep == ";" and notes is not None:
        notes.append(f"{path.name} read as semicolon-separated" + (" with decimal commas (0,758 = 0.758)"
                                                                  if decimal_comma else ""))
    if decimal_comma:
        for col in frame.columns:
            frame[col] = [v.replace(",", ".") if DECIMAL_COMMA.fullmatch(v) else v for v in frame[col]]
    return frame


def require_columns(frame: pd.DataFrame, wanted: list[str], source: str, field_name: str, path: Path) -> None:
    for col in wanted:
        if col not in frame.columns:
            close = difflib.get_close_matches(col, [str(c) for c in frame.columns], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; columns: {', '.join(map(str, frame.columns))}"
            raise SourceError(source, field_name, f"column {col!r} not in {path.name}{hint}")


def read_nested(path: Path, keys: list[str], source: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """A nested mapping ``{key: {id: value}}`` as a table with an ``id`` column and one column per ``key``.

    Rows are ids in order of first appearance over ``keys``; returns the frame and, per key, its value count.
    """
    if not path.is_file():
        raise SourceError(source, "path", f"file not found: {path}")
    try:
        with open_text(path) as handle:
            data = json.load(handle)
    except Exception as err:  # noqa: BLE001
        raise SourceError(source, "path", f"cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SourceError(source, "layout", f"{path.name} is not a mapping {{key: {{id: value}}}}")
    for key in keys:
        if key not in data:
            close = difflib.get_close_matches(key, list(data), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; keys: {', '.join(data)}"
            raise SourceError(source, f"labels.{key}", f"key {key!r} not in {path.name}{hint}")
    order: dict[str, int] = {}
    for key in keys:
        for ident in data[key]:
            order.setdefault(str(ident), len(order))
    frame = pd.DataFrame({"id": list(order)})
    for key in keys:
        values = np.full(len(order), None, dtype=object)
        for ident, value in data[key].items():
            values[order[str(ident)]] = value
        frame[key] = values
    return frame, {k: len(data[k]) for k in keys}


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in MISSING_TEXT


def id_text(value: Any) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


__all__ = ["DECIMAL_COMMA", "MISSING_TEXT", "id_text", "infer_format", "is_missing", "open_text", "read_nested",
           "read_table", "require_columns", "sniff_csv"]
