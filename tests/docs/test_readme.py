"""The README's Python snippet runs as written (from the repository root), and the quick-start time is stated
the same way in the README, the quick-start config and docs/training.md."""

from __future__ import annotations

import re

import pytest

from support.paths import ROOT


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_readme_python_snippet_runs_and_checks_what_it_read(monkeypatch, capsys):
    (snippet,) = python_blocks((ROOT / "README.md").read_text())
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    assert len(namespace["records"].records) == 10 and namespace["graph"].num_nodes > 0
    assert "read 10 structures" in capsys.readouterr().out
    # pointed at a folder that does not exist, it stops with a message instead of an IndexError
    with pytest.raises(SystemExit, match="no structure could be read"):
        exec(compile(snippet.replace("data/structures/cif/cgcnn_cod_sample", "my_cifs/"), "README.md", "exec"), {})


def test_the_quick_start_time_is_one_statement():
    pattern = r"quick start[^\n]*?: (\d+ s wall from an empty cache[^;.\n]*)"
    found = {name: re.findall(pattern, (ROOT / name).read_text(), flags=re.IGNORECASE)
             for name in ("README.md", "configs/quickstart.yaml", "docs/training.md")}
    statements = {s for hits in found.values() for s in hits}
    assert all(found.values()) and len(statements) == 1, found
