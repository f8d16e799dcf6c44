"""The transfer-benchmark runner on real labels (data/benchmark_sample): folds, masking, resumability, report."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from support.paths import ROOT
from tlgnn.benchmark.config import load_experiment
from tlgnn.benchmark.data import load_table
from tlgnn.benchmark.folds import grouped_folds
from tlgnn.benchmark.kinds import MODEL_VERSIONS, cell_version, is_current, kind_version
from tlgnn.benchmark.metrics import classification_metrics, regression_metrics
from tlgnn.benchmark.models import resolve_model
from tlgnn.benchmark.report import BEGIN, END, collect, coverage, write_report
from tlgnn.benchmark.runner import (cell_rows, masked_frame, plan_cells, prepare, run_experiment, run_group,
                                    unfinished_tasks)
from tlgnn.utils.config import ConfigError

SAMPLE = ROOT / "data" / "benchmark_sample"


def _config(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "hse_sample",
        "description": "HSE on the shipped sample",
        "data": {"path": str(SAMPLE)},
        "target": "gap_hse",
        "low": "band_gap_pbe",
        "auxiliary": ["gap_gllbsc"],
        "folds": {"n_folds": 3, "seed": 0},
        "train_sizes": [50, "all"],
        "models": [
            {"kind": "rf_single", "options": {"n_estimators": 15, "n_jobs": 1}},
            {"kind": "rf_difference", "options": {"n_estimators": 15, "n_jobs": 1}},
            {"kind": "affine", "regime": "low_fidelity_known"},
        ],
        "quick": {"folds": [0], "train_sizes": ["all"]},
    }
    raw.update(changes)
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return load_experiment(_config(tmp_path_factory.mktemp("cfg")))


def test_folds_are_grouped_balanced_and_deterministic(experiment):
    table = load_table(experiment.data)
    frame = table.frame
    has = frame.gap_hse.notna().to_numpy()
    folds = grouped_folds(frame.group.to_numpy(), has.astype(float), 3, seed=0)
    assert (frame.groupby("group")["id"].size() >= 1).all()
    assert (pd.Series(folds).groupby(frame.group.to_numpy()).nunique() == 1).all()  # a group never straddles folds
    counts = np.bincount(folds[has], minlength=3)
    assert counts.sum() == 240 and counts.max() - counts.min() <= 2
    np.testing.assert_array_equal(folds, grouped_folds(frame.group.to_numpy(), has.astype(float), 3, seed=0))
    assert not np.array_equal(folds, grouped_folds(frame.group.to_numpy(), has.astype(float), 3, seed=1))


def test_cell_rows_and_masking_hide_what_the_model_must_not_see(experiment):
    data = prepare(experiment)
    train, train_target, test = cell_rows(experiment, data, fold=1, size=50, seed=0)
    assert len(train_target) == 50 and set(train_target) <= set(train)
    assert not set(train) & set(test) and np.all(data.folds[test] == 1)
    assert not set(data.frame.group.iloc[train]) & set(data.frame.group.iloc[test])
    _, bigger, _ = cell_rows(experiment, data, fold=1, size="all", seed=0)
    assert set(train_target) < set(bigger)  # nested learning-curve subsets
    structure_only, low_known = experiment.models[0], experiment.models[2]
    masked = masked_frame(experiment, data.frame, structure_only, train_target, test)
    visible = np.flatnonzero(masked.gap_hse.notna().to_numpy())
    np.testing.assert_array_equal(visible, train_target)
    assert masked.band_gap_pbe.iloc[test].isna().all() and masked.band_gap_pbe.iloc[train].notna().all()
    assert masked.gap_gllbsc.iloc[test].isna().all()
    known = masked_frame(experiment, data.frame, low_known, train_target, test)
    np.testing.assert_array_equal(known.band_gap_pbe.iloc[test], data.frame.band_gap_pbe.iloc[test])
    assert data.frame.gap_hse.iloc[test].notna().all()  # the original is untouched


def test_run_writes_cells_and_rerun_skips_them(tmp_path, experiment):
    results = tmp_path / "results"
    summary = run_experiment(experiment, results, quick=True, log=lambda m: None)
    assert not summary.failed and len(summary.ran) == 3
    cell = results / "hse_sample" / "rf_difference" / "fold0_nall_s0.json"
    record = json.loads(cell.read_text())
    assert record["n_train_target"] == 160 and record["regime"] == "structure_only"
    assert record["accelerator"] == "cpu"
    predictions = pd.read_csv(cell.with_name("fold0_nall_s0.predictions.csv"))
    assert len(predictions) == record["n_test"] == 80
    # every number can be recomputed from the predictions
    assert np.abs(predictions.y_pred - predictions.y_true).mean() == pytest.approx(record["metrics"]["mae"], rel=1e-4)
    np.testing.assert_allclose(predictions.y_pred, predictions.low_pred + predictions.delta_pred, atol=1e-4)
    truth = pd.read_csv(SAMPLE / "labels.csv.gz").set_index("material_id").loc[predictions.id]
    np.testing.assert_allclose(predictions.y_true, truth.gap_hse, atol=1e-6)
    affine = json.loads((results / "hse_sample" / "affine_lowknown" / "fold0_nall_s0.json").read_text())
    assert affine["metrics"]["mae"] < record["metrics"]["mae"]  # knowing PBE beats composition alone
    assert 1.1 < affine["info"]["slope"] < 1.6

    mtime = cell.stat().st_mtime_ns
    # a half-written temp file of another cell is ignored by the report and by the rerun
    tmp = cell.with_name(".fold1_nall_s0.json.tmp-999")
    tmp.write_text('{"metrics": {"mae": 0.0')
    assert len(collect(results)) == 3
    again = run_experiment(experiment, results, quick=True, log=lambda m: None)
    assert again.ran == [] and len(again.skipped) == 3
    assert cell.stat().st_mtime_ns == mtime

    more = run_experiment(experiment, results, only=["hse_sample/rf_difference/fold1_nall*"], log=lambda m: None)
    assert more.ran == ["hse_sample/rf_difference/fold1_nall_s0"]
    assert (results / "hse_sample" / "rf_difference" / "fold1_nall_s0.json").is_file()
    assert len(collect(results)) == 4


def test_truncated_result_is_rerun(tmp_path, experiment):
    results = tmp_path / "results"
    only = ["hse_sample/affine_lowknown"]
    run_experiment(experiment, results, quick=True, only=only, log=lambda m: None)
    cell = results / "hse_sample" / "affine_lowknown" / "fold0_nall_s0.json"
    cell.write_text(cell.read_text()[:40])
    again = run_experiment(experiment, results, quick=True, only=only, log=lambda m: None)
    assert again.ran == ["hse_sample/affine_lowknown/fold0_nall_s0"]
    assert "metrics" in json.loads(cell.read_text())


def test_a_cell_of_an_older_kind_version_is_named_by_the_report_and_rerun(tmp_path, experiment, monkeypatch):
    results = tmp_path / "results"
    run_experiment(experiment, results, quick=True, log=lambda m: None)
    cell = results / "hse_sample" / "rf_difference" / "fold0_nall_s0.json"
    assert json.loads(cell.read_text())["model_version"] == kind_version("rf_difference") == 1
    monkeypatch.setitem(MODEL_VERSIONS, "rf_difference", 2)  # the kind's results changed since the cell was run
    output = tmp_path / "results.md"
    write_report(results, output, tmp_path / "figures")
    text = output.read_text()
    assert "Outdated cells: 1" in text
    assert "- `hse_sample/rf_difference` (`rf_difference` version 1, now 2): fold0_nall_s0" in text
    assert "| `rf_difference` |" not in text and "| `rf_single` |" in text  # left out of the tables
    assert [task for _, task in unfinished_tasks(experiment, results, quick=True)] == [
        ["hse_sample/rf_difference/fold0_nall_s0"]]
    logs: list[str] = []
    again = run_experiment(experiment, results, quick=True, log=logs.append)
    assert again.ran == ["hse_sample/rf_difference/fold0_nall_s0"] and len(again.skipped) == 2
    assert any(line.startswith("[outdated] hse_sample/rf_difference/fold0_nall_s0") for line in logs)
    assert json.loads(cell.read_text())["model_version"] == 2
    write_report(results, output, tmp_path / "figures")
    assert "Outdated cells" not in output.read_text()


def test_cells_without_a_version_count_as_version_1_except_difference_cells_before_6cbf56f():
    assert cell_version({"kind": "rf_single", "finished_at": "2026-11-20T00:00:00+00:00"}) == 1
    assert is_current({"kind": "gnn_elv", "finished_at": "2026-11-26T03:00:00+00:00"})
    # the difference head changed at 6cbf56f (2026-11-26 11:24:25 UTC): older cells are stale, later ones current
    assert kind_version("gnn_difference") == 2
    assert not is_current({"kind": "gnn_difference", "finished_at": "2026-11-26T02:55:41+00:00"})
    assert is_current({"kind": "gnn_difference", "finished_at": "2026-11-26T11:28:06+00:00"})
    assert not is_current({"kind": "gnn_difference"})  # no time: counted as before the change
    assert is_current({"kind": "gnn_difference", "model_version": 2, "finished_at": "2026-11-26T02:55:41+00:00"})


def test_report_tables_plots_and_kept_prose(tmp_path, experiment):
    results = tmp_path / "results"
    run_experiment(experiment, results, quick=True, log=lambda m: None)
    output = tmp_path / "docs" / "results.md"
    output.parent.mkdir()
    output.write_text(f"# Results\n\nhand-written intro\n\n{BEGIN}\nold\n{END}\n\nhand-written outro\n")
    write_report(results, output, tmp_path / "docs" / "results")
    text = output.read_text()
    assert "hand-written intro" in text and "hand-written outro" in text and "\nold\n" not in text
    affine_mae = json.loads((results / "hse_sample/affine_lowknown/fold0_nall_s0.json").read_text())["metrics"]["mae"]
    row = next(line for line in text.splitlines() if line.startswith("| `affine_lowknown` | 160"))
    assert f"{affine_mae:.3f}" in row
    summary = pd.read_csv(tmp_path / "docs" / "results" / "summary.csv")
    assert set(summary.model) == {"rf_single", "rf_difference", "affine_lowknown"}
    png = tmp_path / "docs" / "results" / "hse_sample_mae.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_holds_no_absolute_path_of_this_machine(tmp_path, experiment):
    results = tmp_path / "results"
    run_experiment(experiment, results, quick=True, only=["hse_sample/affine_lowknown"], log=lambda m: None)
    output = tmp_path / "docs" / "results.md"
    write_report(results.resolve(), output, (tmp_path / "docs" / "results").resolve(), root=tmp_path)
    text = output.read_text()
    assert str(tmp_path) not in text
    assert "Finished cells: 1 from `results`" in text and "`results/summary.csv` (relative to this page)" in text
    elsewhere = tmp_path / "elsewhere" / "figures"  # outside the page's folder: a relative path all the same
    write_report(results, output, elsewhere, root=tmp_path / "docs")
    text = output.read_text()
    assert str(tmp_path) not in text and "from `../results`" in text and "`../elsewhere/figures/summary.csv`" in text


def test_coverage_counts_finished_missing_and_not_applicable_cells(tmp_path):
    path = _config(tmp_path, train_sizes=[50, 100000, "all"])
    config = load_experiment(path)
    results = tmp_path / "results"
    summary = run_experiment(config, results, only=["hse_sample/affine_lowknown/fold[01]*"], log=lambda m: None)
    assert len(summary.ran) == 4 and len(summary.too_large) == 2  # N = 100000 exceeds every fold's labels
    table = coverage([path], collect(results)).set_index("model")
    # fold 2 has no finished "all" cell, so its N = 100000 cells are not known to be n/a: counted missing
    assert table.loc["affine_lowknown", ["planned", "finished", "n/a", "missing"]].tolist() == [9, 4, 2, 3]
    assert table.loc["rf_single", ["planned", "finished", "n/a", "missing"]].tolist() == [9, 0, 2, 7]
    output = tmp_path / "results.md"
    write_report(results, output, tmp_path / "figures", configs=[path])
    text = output.read_text()
    assert "4 of 21 applicable cells finished (17 missing; 6 not applicable" in text
    assert "| `hse_sample` | `rf_difference` | 0 | 7 |" in text


def test_plan_quick_and_only(experiment):
    full = plan_cells(experiment)
    assert len(full) == 3 * 3 * 2
    assert {c.key.stem for c in plan_cells(experiment, quick=True)} == {"fold0_nall_s0"}
    only = plan_cells(experiment, only=["hse_sample/rf_*/fold2*"])
    assert sorted(c.key.id for c in only) == [
        "hse_sample/rf_difference/fold2_n50_s0", "hse_sample/rf_difference/fold2_nall_s0",
        "hse_sample/rf_single/fold2_n50_s0", "hse_sample/rf_single/fold2_nall_s0",
    ]


def test_parallel_tasks_follow_the_pattern_order_and_keep_a_folds_shared_model_together(tmp_path):
    models = [{"kind": "affine", "regime": "low_fidelity_known"}, {"kind": "gnn_single"},
              {"kind": "rf_single", "options": {"n_estimators": 15, "n_jobs": 1}}]
    config = load_experiment(_config(tmp_path, models=models))
    results = tmp_path / "results"
    run_experiment(config, results, only=["hse_sample/affine_lowknown/fold0_nall*"], log=lambda m: None)
    only = ["hse_sample/affine*", "hse_sample/gnn_single", "hse_sample/rf_single/fold0*"]
    tasks = unfinished_tasks(config, results, only=only)
    affine = [ids for rank, ids in tasks if rank == 0]
    assert all(len(ids) == 1 for ids in affine) and len(affine) == 5  # 6 cells, one finished: one task each
    assert "hse_sample/affine_lowknown/fold0_nall_s0" not in {i for ids in affine for i in ids}
    gnn = [ids for rank, ids in tasks if rank == 1]  # gnn_single shares its fold's P model: one task per fold
    assert gnn == [[f"hse_sample/gnn_single/fold{f}_n50_s0", f"hse_sample/gnn_single/fold{f}_nall_s0"] for f in range(3)]
    assert [ids for rank, ids in tasks if rank == 2] == [["hse_sample/rf_single/fold0_n50_s0"],
                                                         ["hse_sample/rf_single/fold0_nall_s0"]]


def test_parallel_run_writes_the_same_cells_as_a_serial_one(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("transfer", ROOT / "scripts" / "benchmarks" / "transfer.py")
    transfer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transfer)
    configs = tmp_path / "configs"
    configs.mkdir()
    _config(configs)
    only = ["hse_sample/rf_difference/fold*_nall*", "hse_sample/affine_lowknown/fold1*"]
    args = ["run", "--configs", str(configs), "--workers", "2"] + [a for p in only for a in ("--only", p)]
    assert transfer.main([*args, "--results", str(tmp_path / "parallel")]) == 0
    serial = run_experiment(load_experiment(next(configs.glob("*.yaml"))), tmp_path / "serial", only=only,
                            log=lambda m: None)
    assert len(serial.ran) == 5
    for cell in serial.ran:
        a = json.loads((tmp_path / "parallel" / f"{cell}.json").read_text())
        b = json.loads((tmp_path / "serial" / f"{cell}.json").read_text())
        assert a["metrics"] == pytest.approx(b["metrics"]) and a["settings_hash"] == b["settings_hash"]
    # a parallel rerun skips a finished cell; with --force it recomputes it
    cell_json = tmp_path / "parallel" / f"{serial.ran[0]}.json"
    record = json.loads(cell_json.read_text())
    true_mae, record["metrics"]["mae"] = record["metrics"]["mae"], 99.0
    cell_json.write_text(json.dumps(record))
    one = ["run", "--configs", str(configs), "--workers", "2", "--only", serial.ran[0], "--results",
           str(tmp_path / "parallel")]
    assert transfer.main(one) == 0
    assert json.loads(cell_json.read_text())["metrics"]["mae"] == 99.0
    assert transfer.main([*one, "--force"]) == 0
    assert json.loads(cell_json.read_text())["metrics"]["mae"] == pytest.approx(true_mae)
    # a worker process keeps the experiment's memo for its next task
    again = run_group(str(next(configs.glob("*.yaml"))), str(tmp_path / "group"), [serial.ran[0]])
    assert again.ran == [serial.ran[0]]
    # the report through the script: the coverage of the YAMLs' grid; a folder without YAMLs is refused
    report = ["report", "--results", str(tmp_path / "parallel"), "--output", str(tmp_path / "r.md"),
              "--figures", str(tmp_path / "fig")]
    assert transfer.main([*report, "--configs", str(configs)]) == 0
    assert "5 of 18 applicable cells finished (13 missing; 0 not applicable" in (tmp_path / "r.md").read_text()
    assert transfer.main([*report, "--configs", str(tmp_path / "empty")]) == 2


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"models\[0\]\.kind.*rf_singel"):
        load_experiment(_config(tmp_path, models=[{"kind": "rf_singel"}]))
    with pytest.raises(ConfigError, match=r"models\[0\]\.regime"):
        load_experiment(_config(tmp_path, low=None, models=[{"kind": "affine", "regime": "low_fidelity_known"}]))
    with pytest.raises(ConfigError, match="model names must be unique"):
        load_experiment(_config(tmp_path, models=[{"kind": "rf_single"}, {"kind": "rf_single"}]))


def test_gnn_kinds_are_registered_and_resolve_or_explain():
    try:
        fn = resolve_model("gnn_difference")
    except ImportError as err:
        assert "tlgnn.benchmark.gnn" in str(err)
    else:
        assert callable(fn)
    with pytest.raises(KeyError, match="unknown model kind"):
        resolve_model("xgboost")


def test_aligned_parquet_gets_formula_from_structures_and_renamed_columns(tmp_path, experiment):
    from pymatgen.core import Structure

    with gzip.open(ROOT / "data" / "mp_structures_sample.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for _, line in zip(range(6), handle)]
    structures = [Structure.from_str(r["cif"], fmt="cif") for r in records]
    frame = pd.DataFrame({
        "material_id": [r["material_id"] for r in records],
        "structure": [s.to_json() for s in structures],
        "gap_pbe_mp": np.linspace(0, 2, 6),
        "gap_hse": [1.0, np.nan, 2.0, np.nan, 3.0, 0.5],
    })
    frame.to_parquet(tmp_path / "aligned.parquet")
    spec = experiment.data
    spec.aligned_columns = {"band_gap_pbe": "gap_pbe_mp"}
    table = load_table(spec, tmp_path)
    assert list(table.frame.band_gap_pbe) == list(np.linspace(0, 2, 6))
    assert "structure" not in table.frame.columns
    for formula, structure in zip(table.frame.formula, structures):
        from pymatgen.core import Composition

        assert Composition(formula) == structure.composition
    assert table.frame.group.tolist() == [s.composition.reduced_formula for s in structures]


def test_metrics_on_hand_computed_values():
    m = regression_metrics(y_true=np.array([1.0, 2.0, 4.0]), y_pred=np.array([1.5, 2.0, 2.0]))
    assert m["mae"] == pytest.approx(2.5 / 3) and m["rmse"] == pytest.approx(np.sqrt(4.25 / 3))
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    c = classification_metrics(np.array([0, 1, 1, 0]), proba)
    assert c["accuracy"] == 0.5 and c["f1"] == pytest.approx(0.5) and c["roc_auc"] == pytest.approx(0.75)
