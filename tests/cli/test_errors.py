"""One error base (``tlgnn.TlgnnError``) and the CLI's one place that turns any of them into one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from support.paths import ROOT
import tlgnn
from tlgnn.cli.main import main


def tlgnn_exception_classes() -> list[type]:
    """Every exception class (warnings aside) defined in a module of ``tlgnn``."""
    found = []
    for info in pkgutil.walk_packages(tlgnn.__path__, "tlgnn."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and not issubclass(obj, Warning) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_tlgnn_exception_derives_from_tlgnn_error_and_keeps_its_base():
    from tlgnn.data.sources import SourceError
    from tlgnn.training.run import RunError
    from tlgnn.utils.config import ConfigError

    classes = tlgnn_exception_classes()
    assert len(classes) >= 10
    assert [c.__qualname__ for c in classes if not issubclass(c, tlgnn.TlgnnError)] == []
    assert issubclass(ConfigError, ValueError) and issubclass(SourceError, ValueError)
    assert issubclass(RunError, RuntimeError)


def test_an_error_deep_inside_fit_is_one_line_not_a_traceback(tmp_path, cache_dir, capsys):
    """A graph-building error (an atom with no neighbour within a 1 Å cutoff) used to end in a traceback."""
    rc = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path / "run"),
               "--data.cache_dir", str(cache_dir), "--data.graph.cutoff", "1.0", "--trainer.max_epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("tlgnn fit:")]
    assert len(lines) == 1 and "has no neighbour within 1 Å" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["fit", "test"])
def test_a_config_error_exits_2_with_one_line(tmp_path, capsys, command):
    config = tmp_path / "run.yaml"
    config.write_text("data: {sources: missing.yaml}\nmodel: {encoder: {name: cgcnn}, head: {name: single}}\n"
                      "trainer: {max_epochs: [1,\n")  # broken YAML: the parser's message spans several lines
    extra = ["--checkpoint", str(tmp_path / "k.ckpt")] if command == "test" else []
    assert main([command, "--config", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tlgnn {command}: config error: ") and "invalid YAML" in err


def test_a_key_overridden_twice_is_an_error_naming_both_values(tmp_path, capsys):
    """``--trainer.max_epochs 1 --set trainer.max_epochs=ten`` used to train 1 epoch without a word."""
    out = tmp_path / "run"
    assert main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out),
                 "--trainer.max_epochs", "1", "--set", "trainer.max_epochs=ten"]) == 2
    err = capsys.readouterr().err
    assert "tlgnn fit: config error: trainer.max_epochs: overridden twice ('ten' and '1'); give it once" in err
    assert not out.exists()  # nothing started
    # the same for the source overrides of `tlgnn align`
    assert main(["align", "--config", str(ROOT / "configs" / "data" / "mp_sample.yaml"), "--out", str(out),
                 "--set", "sources.mp.path=a.csv", "--set", "sources.mp.path=b.csv"]) == 2
    assert "sources.mp.path: overridden twice ('a.csv' and 'b.csv')" in capsys.readouterr().err
    assert not out.exists()
