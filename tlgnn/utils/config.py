"""Typed, validated configs: dataclasses filled from YAML/dicts with errors that name the key.

One home for config loading used by data sources and run configs alike:

- :func:`from_dict` builds a (nested) dataclass from a mapping, rejecting unknown keys (with close matches),
  missing required fields and values of the wrong type, naming the dotted key (``trainer.max_epochs``).
- :func:`apply_overrides` applies command-line overrides ``["trainer.max_epochs=5", ...]`` to a raw mapping
  (:func:`parse_overrides`: a key given twice is an error).
- :func:`resolve_path` is the one rule for paths in configs (relative to the YAML they were written in).
- A dataclass may define ``validate(self) -> None`` raising :class:`ConfigError` for cross-field checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml

from tlgnn.errors import TlgnnError

T = TypeVar("T")


class ConfigError(TlgnnError, ValueError):
    """A configuration problem; the message names the key (dotted path) and the reason."""

    def __init__(self, key: str, reason: str, source: str | None = None):
        self.key = key
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {reason}" if key else f"{where}{reason}")


def resolve_path(value: str | Path, base: str | Path, *, normalize: bool = True) -> Path:
    """The one rule for a path in a config: ``~`` is expanded, an absolute path is kept as written, a relative
    one is joined to ``base``.

    ``base`` is the folder of the YAML the path was written in (a command-line override: the current folder).
    With ``normalize`` (run and data configs) a joined path is made canonical (``..`` and symlinks resolved); the
    source YAML passes ``normalize=False`` and keeps the joined path as written (it is part of the alignment
    cache key).
    """
    path = Path(os.path.expanduser(str(value)))
    if path.is_absolute():
        return path
    joined = Path(base).expanduser() / path
    return joined.resolve() if normalize else joined


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    try:
        with path.open() as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ConfigError("", f"invalid YAML: {err}", source=str(path)) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"top level must be a mapping, got {type(data).__name__}", source=str(path))
    return data


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise a ConfigError naming ``key``."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        present = [arg for arg in args if arg is not type(None)]
        if len(present) == 1:  # Optional[X]: X's own error names the inner key and reason
            return _convert(value, present[0], key)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(err.reason)
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1) if isinstance(value, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}")
        return value
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        (item_tp, *rest) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, typing.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {k: _convert(v, val_tp, _join(key, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping (section {tp.__name__}), got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(key, f"expected a path, got {value!r}")
        return Path(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating keys and types; errors name the dotted key."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(fields))}"
        raise ConfigError(_join(prefix, key), f"unknown key{hint}")
    kwargs = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as err:
            if prefix and not err.key.startswith(prefix):
                raise ConfigError(_join(prefix, err.key), err.reason) from err
            raise
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML/JSON-able Python objects (paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _parse_scalar(text: str) -> Any:
    """A command-line value as YAML would read it; ``2e-4`` (which YAML 1.1 keeps as text) as a number."""
    if not text.strip():
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["trainer.max_epochs=5", ...] -> [("trainer.max_epochs", 5), ...]`` (values parsed as YAML).

    A key given twice is a :class:`ConfigError` naming the key and both values: the command line has no order
    a user can rely on (``tlgnn fit`` collects ``--set`` and ``--section.key`` options separately), so neither
    value wins silently.
    """
    items: list[tuple[str, Any]] = []
    seen: dict[str, str] = {}
    for text in overrides:
        if "=" not in text:
            raise ConfigError(text, "override must look like key.path=value")
        key, raw = text.split("=", 1)
        key = key.strip()
        if key in seen:
            raise ConfigError(key, f"overridden twice ({seen[key]!r} and {raw.strip()!r}); give it once")
        seen[key] = raw.strip()
        items.append((key, _parse_scalar(raw)))
    return items


def apply_overrides(data: dict[str, Any], overrides: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides to a raw config mapping (in place; returns it).

    ``overrides`` is ``["trainer.max_epochs=5", "model.head.name=difference"]`` (values parsed as YAML; a key
    given twice is an error, see :func:`parse_overrides`) or a mapping ``{"trainer.max_epochs": 5}``.
    """
    items = list(overrides.items()) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    for key, value in items:
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: depth + 1]), "cannot override inside a non-mapping value")
            node = child
        node[parts[-1]] = value
    return data
