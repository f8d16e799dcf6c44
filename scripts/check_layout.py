#!/usr/bin/env python
"""The layout rules of docs/architecture.md, checked on the source text (nothing is imported):

- no two modules of ``tlgnn/`` import each other, imports inside functions included;
- no function in ``tlgnn/`` or ``scripts/`` is longer than ``MAX_LINES`` lines.

  python scripts/check_layout.py        # prints each violation; exit 1 if there is one
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80


def module_names(package: Path = ROOT / "tlgnn") -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (``pkg/__init__.py`` is ``pkg``)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (``from x import y`` counts as ``x.y`` when that
    is a module, else ``x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.add(full if full in known else module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def mutual_imports() -> list[tuple[str, str]]:
    """Pairs of package modules that import each other."""
    known = module_names()
    edges = {name: imported_modules(name, path, known) for name, path in known.items()}
    return sorted({tuple(sorted((a, b))) for a, deps in edges.items() for b in deps if a in edges.get(b, ())})


def long_functions(folders: tuple[str, ...] = ("tlgnn", "scripts")) -> list[tuple[str, str, int]]:
    """(file, function, lines) for every function longer than :data:`MAX_LINES`."""
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        found.append((str(path.relative_to(ROOT)), node.name, lines))
    return found


def main() -> int:
    problems = [f"{a} and {b} import each other" for a, b in mutual_imports()]
    problems += [f"{file}: {name} is {n} lines (> {MAX_LINES})" for file, name, n in long_functions()]
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
