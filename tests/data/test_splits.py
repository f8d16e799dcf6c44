"""Splits: leak-free, complete, reproducible by seed, savable; the leak checker catches leaks."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from support.paths import ROOT
from tlgnn.data.alignment import align_config
from tlgnn.data.config import SplitConfig
from tlgnn.data.splits import Split, SplitError, check_split, groups, load_split, make_split, save_split
from tlgnn.utils.config import ConfigError, from_dict

CONFIG = ROOT / "configs" / "data" / "mp_sample.yaml"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The sample aligned with polymorph_policy=all: one formula label on several rows (real groups)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["root"] = str(ROOT / "data" / "mp_sample")
    cfg["polymorph_policy"] = "all"
    path = tmp_path_factory.mktemp("cfg") / "all.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return align_config(path, n_jobs=1, cache_dir=tmp_path_factory.getbasetemp() / "tlgnn-parse-cache")[0]


def _sides(split: Split, n: int) -> np.ndarray:
    side = np.full(n, -1)
    for k, rows in enumerate(split.parts().values()):
        side[rows] = k
    return side


@pytest.mark.parametrize("kind", ["random", "grouped", "formula"])
def test_split_kinds_are_complete_reproducible_and_grouped(table, kind):
    cfg = SplitConfig(kind=kind, seed=3, val_fraction=0.15, test_fraction=0.2)
    split = make_split(table, cfg)
    side = _sides(split, len(table))
    assert (side >= 0).all() and sum(split.sizes().values()) == len(table)
    assert abs(split.sizes()["test"] - 0.2 * len(table)) <= 0.05 * len(table)
    again = make_split(table, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(split.parts().values(), again.parts().values()))
    other = make_split(table, SplitConfig(kind=kind, seed=4, val_fraction=0.15, test_fraction=0.2))
    assert not np.array_equal(np.sort(split.test), np.sort(other.test))
    if kind in ("grouped", "formula"):  # rows sharing a source record (the same formula label) never split
        g_of = groups(table, "material")
        for g in np.unique(g_of):
            assert len(set(side[g_of == g])) == 1
    if kind == "formula":
        for formula, rows in table.frame.groupby("formula").groups.items():
            assert len(set(side[np.asarray(rows)])) == 1, formula


def test_material_groups_join_rows_sharing_a_label_record(table):
    g = groups(table, "material")
    shared = table.frame.loc[table.frame["gap_exp"].notna()].groupby("formula").size()
    formula = shared[shared > 1].index[0]
    rows = np.flatnonzero((table.frame["formula"] == formula) & table.frame["gap_exp"].notna())
    assert len(set(g[rows])) == 1
    assert len(np.unique(g)) < len(table)


def test_kfold_folds_partition_the_table(table):
    tests = []
    for fold in range(4):
        split = make_split(table, SplitConfig(kind="kfold", n_folds=4, fold=fold, seed=1, group_by="formula"))
        tests.append(split.test)
        assert len(split.val) > 0 and len(np.intersect1d(split.val, split.test)) == 0
    allt = np.concatenate(tests)
    assert len(allt) == len(table) and len(np.unique(allt)) == len(table)
    assert max(map(len, tests)) - min(map(len, tests)) <= 0.05 * len(table)


def test_target_task_split(table):
    cfg = SplitConfig(kind="target_task", target_task="gap_hse", val_fraction=0.2, test_fraction=0.2, seed=0,
                      group_by="row")
    split = make_split(table, cfg)
    labelled = table.frame["gap_hse"].notna().to_numpy()
    assert labelled[split.val].all() and labelled[split.test].all()
    n = labelled.sum()
    assert abs(len(split.test) - 0.2 * n) <= 3 and abs(len(split.val) - 0.2 * n) <= 3
    assert (~labelled).sum() == (~labelled[split.train]).sum()  # every row without an HSE label trains
    # grouped by material: an unlabelled row follows its group, but every val/test group holds an HSE label
    grouped = make_split(table, SplitConfig(kind="target_task", target_task="gap_hse", seed=0))
    g_of = groups(table, "material")
    for rows in (grouped.val, grouped.test):
        assert all(labelled[g_of == g].any() for g in np.unique(g_of[rows]))
    assert labelled[grouped.test].sum() >= 0.8 * len(grouped.test)
    with pytest.raises(ConfigError, match="target_task"):
        from_dict(SplitConfig, {"kind": "target_task"})


@pytest.mark.parametrize("group_by", ["material", "formula"])
def test_target_task_split_tests_the_same_crystals_in_the_single_task_table(table, group_by):
    """Comparing heads: a single-task run keeps only the target's labelled rows, a multi-task run keeps them all;
    the same target_task split must score both on the same crystals (groups are ordered by their materials,
    not by row positions)."""
    cfg = SplitConfig(kind="target_task", target_task="gap_hse", val_fraction=0.15, test_fraction=0.2, seed=4,
                      group_by=group_by)
    labelled = np.flatnonzero(table.frame["gap_hse"].notna().to_numpy())
    ids = table.frame["material_id"].to_numpy()
    full = make_split(table, cfg)
    single_table = table.subset(labelled)
    single = make_split(single_table, cfg)
    single_ids = single_table.frame["material_id"].to_numpy()
    assert set(ids[full.test][np.isin(full.test, labelled)]) == set(single_ids[single.test])
    assert set(ids[full.val][np.isin(full.val, labelled)]) == set(single_ids[single.val])
    assert len(single.test) > 20
    # another seed draws other crystals
    other = make_split(single_table, SplitConfig(**{**cfg.__dict__, "seed": 5}))
    assert set(single_ids[other.test]) != set(single_ids[single.test])


def test_save_load_and_leak_detection(table, tmp_path):
    split = make_split(table, SplitConfig(kind="formula", seed=2))
    path = save_split(split, table, tmp_path / "split.json")
    loaded = load_split(path, table)
    assert all(np.array_equal(a, b) for a, b in zip(split.parts().values(), loaded.parts().values()))
    # move one row of a multi-row formula group to the other side: a leak
    sizes = table.frame.groupby("formula").size()
    formula = sizes[sizes > 1].index[0]
    rows = np.flatnonzero(table.frame["formula"] == formula)
    side = _sides(split, len(table))
    parts = {k: list(v) for k, v in split.parts().items()}
    names = list(parts)
    src, dst = names[side[rows[0]]], names[(side[rows[0]] + 1) % 3]
    parts[src].remove(rows[0])
    parts[dst].append(rows[0])
    leaky = Split(*(np.asarray(parts[k]) for k in names), kind="formula", seed=2, info=split.info)
    with pytest.raises(SplitError, match="split leak: group"):
        check_split(leaky, table)
    overlap = Split(split.train, np.concatenate([split.val, split.train[:1]]), split.test, "random", 0)
    with pytest.raises(SplitError, match="materials in two parts"):
        check_split(overlap, table)
    missing = Split(split.train[1:], split.val, split.test, "random", 0)
    with pytest.raises(SplitError, match="leaves 1 rows out"):
        check_split(missing, table)
