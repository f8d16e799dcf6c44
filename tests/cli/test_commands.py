"""``tlgnn fit|test|predict`` on the shipped Materials Project sample: overrides, config errors naming the key,
the run directory, ``test`` reproducing ``fit``'s metrics, and ``predict`` surviving a broken CIF."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from support.paths import ROOT
from tlgnn.cli.main import build_parser, main

SAMPLE = ROOT / "configs" / "data" / "mp_sample.yaml"
COD = ROOT / "data" / "structures" / "cif" / "cgcnn_cod_sample"


pytestmark = pytest.mark.usefixtures("one_thread")


def write_config(folder: Path, cache_dir: Path, **changes) -> Path:
    config = {
        "data": {
            "sources": str(SAMPLE),
            "tasks": ["gap_pbe_mf", "is_metal_exp"],
            "cache_dir": str(cache_dir),
            "batch_size": 16,
            "split": {"kind": "random", "val_fraction": 0.15, "test_fraction": 0.15, "seed": 1},
        },
        "model": {
            "encoder": {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1, "out_channels": 16},
            "head": {"name": "multitask", "hidden": [16]},
        },
        "optim": {"lr": 5e-3, "scheduler": "cosine"},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 4, "limit_val_batches": 2,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False},
        "output_dir": "run",  # relative to this YAML
    }
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dotted_options_and_set_both_override():
    args = build_parser().parse_args(["fit", "--config", "c.yaml", "--trainer.max_epochs", "5", "--optim.lr=1e-3",
                                      "--set", "data.batch_size=8", "--resume"])
    assert args.overrides == ["data.batch_size=8", "trainer.max_epochs=5", "optim.lr=1e-3"]
    assert args.resume == "last"
    args = build_parser().parse_args(["test", "--config", "c.yaml", "--checkpoint", "k.ckpt", "--data.tasks", "[a, b]"])
    assert args.overrides == ["data.tasks=[a, b]"] and args.checkpoint == "k.ckpt"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--config", "c.yaml", "--bogus", "1"])


def test_config_typos_exit_non_zero_naming_the_key(tmp_path, cache_dir, capsys):
    path = write_config(tmp_path, cache_dir)
    assert main(["fit", "--config", str(path), "--trainer.max_epoch", "3"]) == 2
    assert "command-line override: trainer.max_epoch: unknown key; did you mean 'max_epochs'" in capsys.readouterr().err
    typo = write_config(tmp_path / "typo", cache_dir, **{"model.head": {"name": "multitask", "hiden": [16]}})
    assert main(["fit", "--config", str(typo)]) == 2
    err = capsys.readouterr().err
    assert "model.head.hiden" in err and "did you mean 'hidden'" in err
    assert not (tmp_path / "typo" / "run").exists()  # nothing started
    # a monitor naming no logged metric is caught before training, with the closest name
    assert main(["fit", "--config", str(path),
                 "--trainer.early_stopping.monitor", "val/gap_pbe_mf/mea"]) == 2
    err = capsys.readouterr().err
    assert "trainer.early_stopping.monitor: no logged metric 'val/gap_pbe_mf/mea'" in err
    assert "did you mean 'val/gap_pbe_mf/mae'" in err and "val/is_metal_exp/roc_auc" in err
    assert not (tmp_path / "run").exists()
    # a mistake in the data the config points to: one line naming source, field and the closest column, status 1
    bad = tmp_path / "bad_sources.yaml"
    text = SAMPLE.read_text().replace("root: ../../data/mp_sample", f"root: {ROOT / 'data' / 'mp_sample'}")
    bad.write_text(text.replace("      band_gap_pbe: {task: gap_pbe_mp", "      band_gap_pb: {task: gap_pbe_mp"))
    assert main(["fit", "--config", str(path), "--data.sources", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "tlgnn fit: data error: source 'mp', field 'labels.band_gap_pb'" in err and "Traceback" not in err
    # the installed entry point: a real process exit status and the message on stderr
    proc = subprocess.run([sys.executable, "-m", "tlgnn.cli.main", "fit", "--config", str(path),
                           "--set", "optim.schedular=cosine"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "optim.schedular: unknown key; did you mean 'scheduler'" in proc.stderr


def test_fit_then_test_then_predict_with_a_broken_cif(tmp_path, cache_dir, capsys):
    import tlgnn

    path = write_config(tmp_path, cache_dir)
    assert main(["fit", "--config", str(path), "--trainer.max_epochs", "2"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "gap_pbe_mf" in out and "is_metal_exp" in out and "accuracy" in out and "mae" in out
    run = tmp_path / "run"
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2  # resolved, overrides in
    fit_metrics = json.loads((run / "metrics.json").read_text())
    assert fit_metrics["epochs"] == 2
    # what the run trains on, what was left out, and the alignment report kept beside the run
    assert "data: " in captured.err and "aligned materials have none of these labels" in captured.err
    assert "alignment report (every dropped row and why)" in captured.err
    assert "dropped" in (run / "alignment_report.md").read_text()

    # a second fit into the same run directory needs --resume (or --overwrite)
    assert main(["fit", "--config", str(path)]) == 1
    assert "--resume" in capsys.readouterr().err

    # `tlgnn test` on the same checkpoint and split reproduces the metrics
    # (by default into run/test: the training run's own metrics.json is kept)
    assert main(["test", "--config", str(path), "--checkpoint", str(best)]) == 0
    assert json.loads((run / "metrics.json").read_text()) == fit_metrics
    test_metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert test_metrics["checkpoint"] == str(best.resolve())
    for task in ("gap_pbe_mf", "is_metal_exp"):
        for name, value in fit_metrics["test"][task].items():
            assert test_metrics["test"][task][name] == pytest.approx(value, rel=1e-5, nan_ok=True), (task, name)
    assert (run / "test" / "predictions_test.csv").is_file()
    assert (run / "test" / "parity_gap_pbe_mf.png").is_file()

    # `tlgnn predict` on a folder with one broken CIF: listed, not fatal
    folder = tmp_path / "cifs"
    folder.mkdir()
    for name in ("1000041.cif", "9000046.cif", "9011050.cif"):
        shutil.copy(COD / name, folder / name)
    (folder / "broken.cif").write_text((COD / "1000050.cif").read_text()[:400])  # truncated mid-file
    output = tmp_path / "preds.csv"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(best), "--input", str(folder), "--output", str(output),
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "broken.cif" in captured.err and "3 predictions" in captured.out
    assert "broken.cif" in (tmp_path / "preds.csv.errors.txt").read_text()
    frame = pd.read_csv(output, dtype={"id": str})
    assert list(frame.columns) == ["id", "gap_pbe_mf", "is_metal_exp", "is_metal_exp_prob_0", "is_metal_exp_prob_1"]
    assert sorted(frame.id) == ["1000041", "9000046", "9011050"]
    np.testing.assert_allclose(frame.is_metal_exp_prob_0 + frame.is_metal_exp_prob_1, 1.0, atol=1e-6)
    assert set(frame.is_metal_exp) <= {0, 1}
    # a disordered CIF is reported by default and predicted with --disordered order
    disordered = ROOT / "data" / "structures" / "cif" / "pymatgen_tests" / "Cod_2100513_abridged.cif"
    shutil.copy(disordered, folder / disordered.name)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(best), "--input", str(folder), "--output", str(output),
                 "--device", "cpu"]) == 0
    assert "Cod_2100513_abridged.cif: disordered sites" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(best), "--input", str(folder), "--output", str(output),
                 "--device", "cpu", "--disordered", "order"]) == 0
    assert "Cod_2100513_abridged" in set(pd.read_csv(output, dtype={"id": str}).id)
    (folder / disordered.name).unlink()
    # --known on a model whose head does not use known values: predicted as before, and said so
    (tmp_path / "known.csv").write_text("id,gap_pbe_mf\n1000041,3.0\n")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(best), "--input", str(folder), "--output", str(tmp_path / "k.csv"),
                 "--device", "cpu", "--known", str(tmp_path / "known.csv")]) == 0
    assert "note: this model does not use known values" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "k.csv", dtype={"id": str}), frame)
    (tmp_path / "known.csv").write_text("id,gap_pbe\n1000041,3.0\n")
    assert main(["predict", "--checkpoint", str(best), "--input", str(folder), "--output", str(tmp_path / "k.csv"),
                 "--device", "cpu", "--known", str(tmp_path / "known.csv")]) == 1
    assert "column 'gap_pbe' is not a task of this model; did you mean 'gap_pbe_mf'?" in capsys.readouterr().err
    # a folder holding only a sub-folder: nothing found, --recursive named, no stale predictions left behind
    nested = tmp_path / "nested"
    (nested / "inner").mkdir(parents=True)
    shutil.copy(COD / "1000041.cif", nested / "inner" / "1000041.cif")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(best), "--input", str(nested), "--output", str(output),
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no structure files found" in err and "--recursive" in err and not output.exists()
    assert main(["predict", "--checkpoint", str(best), "--input", str(nested), "--output", str(output),
                 "--device", "cpu", "--recursive"]) == 0
    assert list(pd.read_csv(output, dtype={"id": str}).id) == ["inner/1000041"]
    api = tlgnn.load_model(best).predict(sorted(str(p) for p in folder.glob("1*.cif")) + [str(folder / "9*.cif")])
    merged = frame.merge(api, on="id", suffixes=("", "_api"))
    assert len(merged) == 3
    np.testing.assert_allclose(merged.gap_pbe_mf, merged.gap_pbe_mf_api, rtol=1e-6)
    # ASE Atoms and pymatgen Structures give the same numbers as the file
    import ase.io
    from pymatgen.core import Structure

    objects = [ase.io.read(folder / "1000041.cif"), Structure.from_file(folder / "1000041.cif")]
    from_objects = tlgnn.load_model(best).predict(objects)
    expected = frame.set_index("id").loc["1000041", "gap_pbe_mf"]
    np.testing.assert_allclose(from_objects.gap_pbe_mf, [expected, expected], rtol=1e-5)
    # one object alone (iterable over its sites/atoms) is one structure, not a list of them
    model = tlgnn.load_model(best)
    for single in objects:
        alone = model.predict(single)
        assert list(alone.id) == ["structure_0"]
        np.testing.assert_allclose(alone.gap_pbe_mf, [expected], rtol=1e-5)
        assert model.embed(single).shape == (1, 16)
    ids, emb = model.embed([str(folder / "broken.cif"), str(folder / "1000041.cif")], return_ids=True)
    assert ids == ["1000041"] and emb.shape == (1, 16)  # the unusable file is left out; ids say which rows remain
