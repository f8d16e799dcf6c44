"""Dataset and TransferDataModule on the shipped sample: masks are right, statistics come from training rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support.paths import ROOT
from tlgnn.data import DataConfig, TransferDataModule
from tlgnn.data.dataset import StructureDataset
from tlgnn.utils.config import ConfigError, from_dict

TASKS = ["gap_pbe_mf", "gap_hse", "is_metal_exp"]


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    raw = {"sources": "configs/data/mp_sample.yaml", "tasks": TASKS, "batch_size": 64,
           "split": {"kind": "target_task", "target_task": "gap_hse", "seed": 0, "file": str(base / "split.json")},
           "cache_dir": str(base / "tlgnn-parse-cache")}
    config = from_dict(DataConfig, raw).resolve_paths(ROOT)
    module = TransferDataModule(config)
    module.setup("fit")
    return module


def test_batches_carry_labels_and_masks(dm):
    table = dm.table
    values = table.labels(TASKS)
    seen = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert batch.y.dtype == torch.float32 and batch.y_mask.dtype == torch.bool
            assert batch.y.shape == batch.y_mask.shape == (batch.num_graphs, 3)
            rows = batch.idx.numpy()
            expected = values[rows]
            np.testing.assert_array_equal(batch.y_mask.numpy(), ~np.isnan(expected))
            present = batch.y_mask.numpy()
            np.testing.assert_allclose(batch.y.numpy()[present], expected[present].astype(np.float32))
            assert list(batch.material_id) == table.frame["material_id"].to_numpy()[rows].tolist()
            assert batch.z.shape[0] == int(table.frame["n_sites"].to_numpy()[rows].sum())
            seen += batch.num_graphs
    assert seen == len(table)
    # a missing label never becomes a training signal: 0.0 only ever appears masked or as a real label
    assert (~dm.dataset.y_mask).sum() > 0 and torch.all(dm.dataset.y[~dm.dataset.y_mask] == 0)


def test_tasks_rows_and_split(dm):
    assert [t.name for t in dm.tasks] == TASKS and dm.tasks[2].kind == "classification"
    assert dm.table.frame[TASKS].notna().any(axis=1).all()  # rows without any selected label were dropped
    hse = dm.table.frame["gap_hse"].notna().to_numpy()
    assert hse[dm.split.val].all() and hse[dm.split.test].all()
    assert Path(dm.config.split.file).is_file() and dm.alignment_report.name == "report.md"


def test_target_stats_from_training_split_only(dm):
    mean, std = dm.target_stats()
    assert set(mean) == {"gap_pbe_mf", "gap_hse"}  # regression tasks only
    train = dm.table.frame.iloc[dm.split.train]
    assert mean["gap_hse"] == pytest.approx(train["gap_hse"].dropna().mean(), rel=1e-6)
    assert std["gap_hse"] == pytest.approx(train["gap_hse"].dropna().std(ddof=0), rel=1e-5)
    assert mean["gap_hse"] != pytest.approx(dm.table.frame["gap_hse"].dropna().mean(), rel=1e-6)


def test_pair_stats_are_of_the_difference_on_rows_with_both_labels(dm):
    pairs = dm.pair_stats()
    train = dm.table.frame.iloc[dm.split.train]
    both = train[["gap_pbe_mf", "gap_hse"]].dropna()
    diff = both["gap_hse"] - both["gap_pbe_mf"]
    assert 2 <= len(both) < train["gap_pbe_mf"].notna().sum()
    assert pairs["gap_hse"]["gap_pbe_mf"] == pytest.approx([diff.mean(), diff.std(ddof=0)], rel=1e-5)
    assert pairs["gap_pbe_mf"]["gap_hse"] == pytest.approx([-diff.mean(), diff.std(ddof=0)], rel=1e-5)
    mean, _ = dm.target_stats()  # the difference of the two means is another number: other crystals
    assert abs((mean["gap_hse"] - mean["gap_pbe_mf"]) - diff.mean()) > 0.01


def test_reuse_saved_split_and_aligned_table(dm, tmp_path):
    import copy

    from tlgnn.data.splits import SplitError

    cfg = DataConfig(aligned=str(dm.alignment_report.parent), tasks=TASKS, cache_dir=dm.config.cache_dir)
    cfg.split = copy.deepcopy(dm.config.split)
    again = TransferDataModule(cfg)
    again.setup()
    for a, b in zip(dm.split.parts().values(), again.split.parts().values()):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))
    # a split file is not silently reused under other split settings
    cfg.split.seed = 5
    with pytest.raises(SplitError, match=r"split.seed: .*split.json was drawn with seed=0, this config has 5"):
        TransferDataModule(cfg).setup()


def test_structure_dataset_for_prediction(dm):
    from tlgnn.graphs import CrystalGraphBuilder

    structures = [(mid, dm.table.structure(i)) for i, mid in enumerate(dm.table.frame["material_id"][:3])]
    ds = StructureDataset(structures, CrystalGraphBuilder(), tasks=dm.tasks)
    item = ds[1]
    assert item.y.shape == (1, 3) and not item.y_mask.any() and item.id == structures[1][0]
    ref = dm.dataset[1]
    torch.testing.assert_close(item.edge_dist, ref.edge_dist)


def test_data_config_validation():
    with pytest.raises(ConfigError, match="give exactly one of 'sources'"):
        from_dict(DataConfig, {})
    with pytest.raises(ConfigError, match=r"split.test_fraction: must be in \[0, 1\)"):
        from_dict(DataConfig, {"aligned": "x", "split": {"test_fraction": 1.0}})
    with pytest.raises(ConfigError, match="split.target_task: 'gap_hse' is not one of data.tasks"):
        from_dict(DataConfig, {"aligned": "x", "tasks": ["a"], "split": {"kind": "target_task", "target_task": "gap_hse"}})
    cfg = from_dict(DataConfig, {"aligned": "runs/a", "split": {"file": "/abs/split.json"}}).resolve_paths("/base/cfg")
    assert cfg.aligned == "/base/cfg/runs/a" and cfg.split.file == "/abs/split.json"


def test_damaged_cached_alignment_is_set_aside_and_rebuilt(dm, tmp_path, capsys):
    """A byte flipped in a cached aligned table (which would train on wrong labels) or a truncated one is
    detected by its checksum, moved to corrupt/ and aligned again; a damaged user-given table is an error."""
    import shutil

    from tlgnn.data.alignment import AlignmentError
    from tlgnn.data.datamodule import load_table
    from tlgnn.data.table import MaterialTable
    from tlgnn.utils.files import CorruptFileError

    raw = {"sources": "configs/data/mp_sample.yaml", "tasks": TASKS, "cache_dir": dm.config.cache_dir,
           "align_dir": str(tmp_path / "al")}
    cfg = from_dict(DataConfig, raw).resolve_paths(ROOT)
    table, _ = load_table(cfg)
    path = tmp_path / "al" / "aligned.parquet"
    assert (tmp_path / "al" / "aligned.parquet.xxh3").is_file() and (tmp_path / "al" / "report.md").is_file()
    reference = table.frame["gap_hse"].to_numpy()
    for damage in ("flip", "cut"):
        data = bytearray(path.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x01
        else:
            data = data[: len(data) // 2]
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptFileError, match="aligned.parquet"):
            MaterialTable.load(path)
        again, _ = load_table(cfg)
        np.testing.assert_array_equal(again.frame["gap_hse"].to_numpy(), reference)
        assert "the cached alignment is damaged" in capsys.readouterr().err
    assert len(list((tmp_path / "corrupt").iterdir())) == 2
    # a table the user points to is not rebuilt: a data error naming it
    shutil.copy(path, tmp_path / "mine.parquet")
    shutil.copy(str(path) + ".xxh3", tmp_path / "mine.parquet.xxh3")
    (tmp_path / "mine.parquet").write_bytes((tmp_path / "mine.parquet").read_bytes()[:1000])
    with pytest.raises(AlignmentError, match=r"data.aligned: .*mine.parquet: checksum mismatch"):
        load_table(from_dict(DataConfig, {"aligned": str(tmp_path / "mine.parquet"), "tasks": TASKS}))


def test_a_table_changed_under_its_old_timestamp_realigns(dm, tmp_path):
    """The alignment cache is keyed by the tables' contents, not by size and mtime: a corrected label file copied
    with its old timestamp (cp -p, rsync -a) is not mistaken for the old one."""
    import csv
    import gzip
    import json
    import os

    import yaml

    from tlgnn.data.datamodule import load_table

    sample = ROOT / "data" / "mp_sample"
    rows = list(csv.DictReader(gzip.open(sample / "labels.csv.gz", "rt")))[:20]
    cifs = {d["material_id"]: d["cif"] for d in map(json.loads, gzip.open(sample / "structures.jsonl.gz", "rt"))}
    for r in rows:
        (tmp_path / f"{r['material_id']}.cif").write_text(cifs[r["material_id"]])
    labels = tmp_path / "labels.csv"
    labels.write_text("id,gap\n" + "".join(f"{r['material_id']},1.50\n" for r in rows))
    (tmp_path / "src.yaml").write_text(yaml.safe_dump({"root": ".", "sources": [
        {"name": "s", "path": "labels.csv", "id_column": "id", "structure": {"kind": "files", "column": "id"},
         "labels": {"gap": {"unit": "eV"}}}]}))
    cfg = from_dict(DataConfig, {"sources": str(tmp_path / "src.yaml"), "cache_dir": dm.config.cache_dir})
    assert (load_table(cfg)[0].frame["gap"] == 1.5).all()
    stat = labels.stat()
    labels.write_text(labels.read_text().replace("1.50", "2.50", 1))  # same size
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sorted(load_table(cfg)[0].frame["gap"].unique()) == [1.5, 2.5]
