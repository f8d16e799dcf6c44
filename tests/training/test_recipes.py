"""The recipes (configs/recipes/*.yaml) load, name tasks the staged data declares, and build their models.

Training them needs the staged data (../shared); README "Best models" gives their measured time and accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tlgnn.data import TaskSpec
from tlgnn.models import build_model
from tlgnn.training.config import check_model_options, load_run_config
from tlgnn.training.run import ensemble_of

from support.paths import ROOT

RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))


def _declared_tasks(source_yaml) -> dict[str, dict]:
    config = yaml.safe_load(source_yaml.read_text())
    tasks = {}
    for source in config["sources"]:
        for label in (source.get("labels") or {}).values():
            tasks[label["task"]] = label
    return tasks


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_builds_its_model_on_the_staged_tasks(path):
    config = load_run_config(path)
    check_model_options(config.model, log=None)
    declared = _declared_tasks(Path(config.data.sources))
    assert set(config.data.tasks) <= set(declared), path
    tasks = [TaskSpec(name, "regression", unit="eV", fidelity=declared[name].get("fidelity"))
             for name in config.data.tasks]
    ensemble = ensemble_of(config)["ensemble"]  # a calibrated ensemble by default (issue 17)
    assert ensemble["members"] >= 5 and ensemble["bootstrap"] and ensemble["shared_encoder"]
    model = build_model(config.model.encoder, config.model.head, tasks, ensemble)
    assert model.head.fits_directly and model.head.error_models
    head = model.head.members[0]
    assert config.model.finetune.freeze == "encoder"
    if config.model.encoder["name"] == "stack":  # one checkpoint (or its own weights) per stacked encoder
        assert len(config.model.init_from) == len(config.model.encoder["encoders"])
        assert all(p is None or Path(p).is_file() for p in config.model.init_from)
    assert head.chain == ["gap_pbe_mp", "gap_hse"]
    # the PBE-known recipe reads the known PBE gap (tlgnn predict --known); the structure-only ones do not
    assert head.reads_known() == (["gap_pbe_mp"] if "known" in path.stem else [])
    assert head.condition_on_low


def test_there_is_a_structure_only_and_a_pbe_known_recipe():
    assert {"hse_structure_only", "hse_pbe_known"} <= {p.stem for p in RECIPES}
