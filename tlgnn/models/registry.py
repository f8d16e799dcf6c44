"""A small name -> class registry shared by encoders and heads, with option checking."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")


def close_matches(word: str, candidates: list[str] | tuple[str, ...] | set[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix naming the closest candidates, or ``""``."""
    hits = difflib.get_close_matches(word, sorted(candidates), n=3, cutoff=0.5)
    if not hits:
        return ""
    return " (did you mean " + " or ".join(repr(h) for h in hits) + "?)"


def accepted_options(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword options a class constructor accepts, following ``**kwargs`` up to the base classes."""
    options: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        forwards = False
        for name, param in params.items():
            if name == "self":
                continue
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                options.setdefault(name, param)
        if not forwards:
            break
    return options


class Registry(dict):
    """``name -> class`` mapping; ``build`` checks the name and the options before constructing.

    ``kind`` ("encoder", "head") is used in error messages; ``positional`` names the constructor
    arguments that ``build`` passes positionally (they are not user options).
    """

    def __init__(self, kind: str, positional: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.kind = kind
        self.positional = positional

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator adding the class under ``name``; a duplicate name is an error."""

        def add(cls: type[T]) -> type[T]:
            if name in self and self[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self[name].__qualname__}")
            self[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return add

    def renamed(self, name: str) -> dict[str, str]:
        """``{old option name: current name}`` of ``name``'s class (its ``renamed_options``; ``{}`` if none)."""
        return dict(getattr(self.get(name), "renamed_options", None) or {})

    def canonical(self, name: str, options: Mapping[str, Any],
                  note: Callable[[str, str], None] | None = None) -> dict[str, Any]:
        """``options`` with every old option name of ``name`` replaced by its current name (same order).

        Old names stay readable (checkpoints and configs written before a rename); ``note(old, new)`` is called
        for each one found. Giving both names of one option is a ``ValueError``.
        """
        renamed = self.renamed(name) if isinstance(name, str) else {}
        out: dict[str, Any] = {}
        for key, value in options.items():
            new = renamed.get(key)
            if new is None:
                out[key] = value
                continue
            if new in options:
                raise ValueError(f"{self.kind} {name!r}: options {key!r} and {new!r} are one option (its old "
                                 f"and its current name); give only {new!r}")
            if note is not None:
                note(key, new)
            out[new] = value
        return out

    def upgraded(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` of a config read from a checkpoint, completed by the class's ``upgrade_options`` (options
        added after the checkpoint was written get the values that rebuild it as it was); unchanged for a class
        without that hook or an unknown name (reported when the model is built)."""
        hook = getattr(self.get(name) if isinstance(name, str) else None, "upgrade_options", None)
        return dict(options) if hook is None else hook(options)

    def check(self, name: str, options: Mapping[str, Any]) -> type:
        """The class for ``name`` after checking that every option (old names included) is accepted; clear
        errors otherwise."""
        if not isinstance(name, str) or name not in self:
            raise ValueError(
                f"unknown {self.kind} {name!r}{close_matches(str(name), list(self))}; "
                f"available: {', '.join(sorted(self))}"
            )
        cls = self[name]
        accepted = {k: p for k, p in accepted_options(cls).items() if k not in self.positional}
        for key in self.canonical(name, options):
            if key not in accepted:
                known = [*accepted, *self.renamed(name)]
                raise ValueError(
                    f"{self.kind} {name!r} has no option {key!r}{close_matches(key, known)}; "
                    f"options: {', '.join(sorted(accepted)) or '(none)'}"
                )
        return cls

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Construct ``self[name](*args, **options)`` after ``check`` (old option names read as the new ones)."""
        options = self.canonical(name, options)
        return self.check(name, options)(*args, **options)


def full_options(registry: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` (``{name, **options}``) with every constructor default filled in (for comparisons)."""
    name = spec.get("name")
    options = {k: v for k, v in spec.items() if k != "name"}
    if name in registry:
        options = registry.canonical(name, options)  # old option names (older checkpoints) as the current ones
        positional = getattr(registry, "positional", ())
        for key, param in accepted_options(registry[name]).items():
            if key not in positional and key not in options and param.default is not inspect.Parameter.empty:
                options[key] = param.default
    return {"name": name, **options}
