"""Checkpoint files (``tlgnn.training.checkpoint``): nothing loaded from a file runs code, on every loading path;
checksum sidecars written beside every checkpoint tlgnn writes and checked on load; one-line errors for files that
are not tlgnn checkpoints. Real runs on the shipped Materials Project sample, real Lightning, no mocks."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from support.paths import ROOT
import tlgnn
from tlgnn.cli.main import main
from tlgnn.training.checkpoint import (CHECKPOINT_KEY, CheckpointError, check_file, load_module, read_checkpoint,
                                       read_pretrained)
from tlgnn.utils.config import ConfigError
from tlgnn.utils.files import checksum_path, file_digest, write_checksum

SAMPLE = ROOT / "configs" / "data" / "mp_sample.yaml"
SHIPPED = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
CIF = next(iter(sorted((ROOT / "data" / "structures" / "cif" / "cgcnn_cod_sample").glob("*.cif"))))

pytestmark = pytest.mark.usefixtures("one_thread")


class Plant:
    """Unpickling this runs a shell command that creates ``marker`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> Path:
    """A finished one-epoch ``tlgnn fit`` run (its config is ``run.yaml`` beside ``run/``)."""
    folder = tmp_path_factory.mktemp("ckpt")
    config = {
        "data": {"sources": str(SAMPLE), "tasks": ["gap_pbe_mf", "is_metal_exp"], "cache_dir": str(cache_dir),
                 "batch_size": 16,
                 "split": {"kind": "random", "val_fraction": 0.15, "test_fraction": 0.15, "seed": 1}},
        "model": {"encoder": {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1, "out_channels": 16},
                  "head": {"name": "multitask", "hidden": [16]}},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 4, "limit_val_batches": 2,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False},
        "output_dir": "run",
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(folder / "run.yaml"), "--no-test"]) == 0
    return folder


@pytest.fixture()
def hostile(run, tmp_path) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: the run's real ``last.ckpt`` with one extra object whose unpickling creates
    ``marker``, and a matching checksum sidecar (an attacker can write one too)."""
    checkpoint = torch.load(run / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "pwned"
    checkpoint["callbacks"]["Extra"] = Plant(marker)
    path = tmp_path / "shared.ckpt"
    torch.save(checkpoint, path)
    write_checksum(path)
    # it is a live one: an unsafe load runs the command
    torch.load(path, weights_only=False)
    assert marker.is_file()
    marker.unlink()
    return path, marker


def _error_line(err: str, command: str) -> str:
    """The one line a command printed for its error (no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"tlgnn {command}: ")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ no code runs
def test_a_hostile_checkpoint_runs_nothing_on_any_loading_path(run, hostile, capsys):
    path, marker = hostile
    config = str(run / "run.yaml")

    with pytest.raises(CheckpointError, match="refused: it asks to import posix.system") as err:
        tlgnn.load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="posix.system"):
        read_checkpoint(path)

    assert main(["predict", "--checkpoint", str(path), "--input", str(CIF), "--output",
                 str(path.with_suffix(".csv"))]) == 1
    assert str(path) in _error_line(capsys.readouterr().err, "predict")

    assert main(["test", "--config", config, "--checkpoint", str(path)]) == 1
    assert "posix.system" in _error_line(capsys.readouterr().err, "test")

    assert main(["fit", "--config", config, "--output_dir", str(path.parent / "tuned"), "--no-test",
                 "--model.init_from", str(path)]) == 2
    line = _error_line(capsys.readouterr().err, "fit")
    assert "model.init_from" in line and str(path) in line and "posix.system" in line

    assert main(["fit", "--config", config, "--resume", str(path)]) == 1
    line = _error_line(capsys.readouterr().err, "fit")
    assert line.startswith(f"tlgnn fit: cannot resume: {path}: refused") and "posix.system" in line

    # the scripts' loaders: pretrain.py reads a checkpoint before resuming, bench_finetune.py reads the
    # pretrained one, bench_data.py its graph files
    with pytest.raises(CheckpointError, match="posix.system"):
        _script("pretrain").previous_training_seconds(path)
    with pytest.raises(ConfigError, match="posix.system"):
        read_pretrained(path)
    with pytest.raises(ValueError, match="shared.ckpt"):
        _script("bench_data").load_packed(path)
    assert not marker.exists()


def test_lightning_itself_is_asked_to_load_weights_only(run, hostile):
    """Behind the check of ``resume_checkpoint``, Lightning's own load of the file refuses code too."""
    from tlgnn.training.run import build_datamodule, build_module
    from tlgnn.training.trainer import build_trainer
    from tlgnn.training.config import load_run_config

    path, marker = hostile
    config = load_run_config(str(run / "run.yaml"), [f"output_dir={path.parent / 'direct'}"])
    dm = build_datamodule(config, "fit")
    trainer = build_trainer(config, path.parent / "direct", [], [])
    with pytest.raises(Exception, match="posix.system|Weights only load failed"):
        trainer.fit(build_module(config, dm), datamodule=dm, ckpt_path=str(path), weights_only=True)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ checksums
def test_every_checkpoint_tlgnn_writes_has_a_checksum_sidecar(run, tmp_path):
    folder = run / "run" / "checkpoints"
    for name in ("best.ckpt", "last.ckpt"):
        assert checksum_path(folder / name).read_text().strip() == file_digest(folder / name), name
    from tlgnn.training.checkpoint import checkpoint_info, export_checkpoint

    exported = export_checkpoint(load_module(folder / "best.ckpt"), tmp_path / "compact.ckpt", info={"n": 1})
    assert checksum_path(exported).read_text().strip() == file_digest(exported)
    assert checkpoint_info(exported) == {"n": 1}
    # the shipped pretrained encoder carries one too, and matches it
    assert checksum_path(SHIPPED).is_file()
    check_file(SHIPPED)


def test_a_damaged_checkpoint_is_refused_and_an_unverified_one_says_so_once(run, tmp_path, capsys):
    best = run / "run" / "checkpoints" / "best.ckpt"
    damaged = tmp_path / "damaged.ckpt"
    shutil.copy(best, damaged)
    shutil.copy(checksum_path(best), checksum_path(damaged))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged.ckpt is damaged \(checksum mismatch"):
        tlgnn.load_model(damaged)
    assert main(["test", "--config", str(run / "run.yaml"), "--checkpoint", str(damaged)]) == 1
    assert "checksum mismatch" in _error_line(capsys.readouterr().err, "test")

    unverified = tmp_path / "received.ckpt"
    shutil.copy(best, unverified)
    first = load_module(unverified)
    load_module(unverified)
    err = capsys.readouterr().err
    assert err.count("loaded it unverified") == 1 and "received.ckpt" in err
    reference = load_module(best).state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in first.state_dict().items())


# ------------------------------------------------------------------------------------------------ foreign files
@pytest.mark.parametrize("kind", ["text", "weights", "module"])
def test_a_file_that_is_not_a_tlgnn_checkpoint_is_one_line(run, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "weights":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)  # a plain torch file: no "tlgnn" section
    else:
        torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled module: code to import
    reason = {"text": "not a readable checkpoint", "weights": "not a tlgnn checkpoint",
              "module": "refused: it asks to import torch.nn.modules.linear.Linear"}[kind]
    assert main(["test", "--config", str(run / "run.yaml"), "--checkpoint", str(path)]) == 1
    err = capsys.readouterr().err
    assert _error_line(err, "test").startswith(f"tlgnn test: {path}: {reason}"), err
    assert len(err.strip().splitlines()) == 1, err  # nothing but the error
    assert main(["fit", "--config", str(run / "run.yaml"), "--resume", str(path)]) == 1
    err = capsys.readouterr().err
    assert _error_line(err, "fit").startswith(f"tlgnn fit: cannot resume: {path}: {reason}"), err
    assert len(err.strip().splitlines()) == 1, err


def test_an_old_format_hostile_file_is_refused_too(tmp_path):
    """``torch.save(..., _use_new_zipfile_serialization=False)`` writes no zip archive: the safe unpickler still
    guards it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {}, CHECKPOINT_KEY: {}, "extra": Plant(marker)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy.ckpt: refused: it asks to import posix.system") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value) and not marker.exists()
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes.ckpt: not a readable checkpoint \(") as err:
        read_checkpoint(text)
    assert "weights_only` set to `False`" not in str(err.value)  # no advice to load it unsafely


def test_a_checkpoint_describes_its_model(run):
    meta = read_checkpoint(run / "run" / "checkpoints" / "last.ckpt")[CHECKPOINT_KEY]
    assert meta["format"] == 1 and [t["name"] for t in meta["tasks"]] == ["gap_pbe_mf", "is_metal_exp"]
    assert meta["model"]["encoder"]["name"] == "cgcnn" and meta["graph"]["cutoff"] > 0
