"""The layout rules of docs/architecture.md hold for the code as it is (``scripts/check_layout.py``)."""

from __future__ import annotations

import importlib.util

from support.paths import ROOT


def _checker():
    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "scripts" / "check_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_two_tlgnn_modules_import_each_other():
    assert _checker().mutual_imports() == []


def test_no_function_in_the_package_or_scripts_is_longer_than_80_lines():
    assert _checker().long_functions() == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    checker = _checker()
    known = {"tlgnn.a": tmp_path / "a.py", "tlgnn.b": tmp_path / "b.py"}
    (tmp_path / "a.py").write_text("def f():\n    from tlgnn.b import g\n")
    (tmp_path / "b.py").write_text("from . import a\n")
    assert checker.imported_modules("tlgnn.a", known["tlgnn.a"], known) == {"tlgnn.b"}
    assert checker.imported_modules("tlgnn.b", known["tlgnn.b"], known) == {"tlgnn.a"}
