"""The transfer benchmark (issue 7): experiments, grouped k-fold cells, model contract, runner and report.

- :mod:`tlgnn.benchmark.config` — experiment YAMLs (``configs/benchmarks/*.yaml``)
- :mod:`tlgnn.benchmark.data` — the experiment table (raw shared data or an aligned parquet)
- :mod:`tlgnn.benchmark.folds` — grouped folds balanced on the scarce labels, nested learning-curve subsets
- :mod:`tlgnn.benchmark.kinds` — the model kinds (``MODEL_KINDS``) and the version of each kind's results
- :mod:`tlgnn.benchmark.models` — the ``CellInput -> CellOutput`` contract, ``resolve_model``
- :mod:`tlgnn.benchmark.baseline_models` — random forests and the affine map as model kinds
- :mod:`tlgnn.benchmark.runner` — resumable cells (atomic files, skip finished, rerun outdated versions)
- :mod:`tlgnn.benchmark.report` — tables and plots into ``docs/results.md``

Command line: ``scripts/benchmarks/transfer.py``.
"""
