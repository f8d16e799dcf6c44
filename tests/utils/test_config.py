"""Config loading: unknown keys, wrong types and missing keys are errors that name the dotted key."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from tlgnn.utils.config import ConfigError, apply_overrides, from_dict, resolve_path, to_dict


@dataclass
class Trainer:
    max_epochs: int = 10
    precision: Literal["32", "bf16-mixed"] = "32"


@dataclass
class Run:
    name: str
    lr: float = 1e-3
    tasks: list[str] = field(default_factory=list)
    trainer: Trainer = field(default_factory=Trainer)


def test_nested_values_are_converted():
    run = from_dict(Run, {"name": "a", "lr": 1, "tasks": ["gap"], "trainer": {"max_epochs": 3}})
    assert run.lr == 1.0 and isinstance(run.lr, float)
    assert run.trainer.max_epochs == 3 and run.tasks == ["gap"]
    assert to_dict(run)["trainer"] == {"max_epochs": 3, "precision": "32"}


def test_typo_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch: unknown key; did you mean 'max_epochs'"):
        from_dict(Run, {"name": "a", "trainer": {"max_epoch": 3}})


def test_wrong_type_and_missing_key():
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs: expected an integer, got 'ten'"):
        from_dict(Run, {"name": "a", "trainer": {"max_epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"^name: required key is missing"):
        from_dict(Run, {})
    with pytest.raises(ConfigError, match=r"trainer\.precision: must be one of"):
        from_dict(Run, {"name": "a", "trainer": {"precision": "16"}})


def test_overrides_parse_yaml_values():
    raw = apply_overrides({"name": "a"}, ["trainer.max_epochs=5", "lr=2e-4", "tasks=[x, y]"])
    run = from_dict(Run, raw)
    assert run.trainer.max_epochs == 5 and run.lr == pytest.approx(2e-4) and run.tasks == ["x", "y"]


def test_a_key_overridden_twice_is_an_error_and_a_mapping_cannot_repeat_one():
    with pytest.raises(ConfigError, match=r"trainer.max_epochs: overridden twice \('1' and 'ten'\)"):
        apply_overrides({}, ["trainer.max_epochs=1", "name=a", "trainer.max_epochs=ten"])
    assert apply_overrides({}, ["trainer.max_epochs=1", "trainer.precision=32"]) == {
        "trainer": {"max_epochs": 1, "precision": 32}}


def test_resolve_path_is_the_one_rule_for_config_paths(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    yaml_dir = tmp_path / "link" / "configs"
    assert resolve_path("/abs/../x.csv", yaml_dir) == pathlib.Path("/abs/../x.csv")  # absolute: as written
    assert resolve_path("../runs/a", yaml_dir) == tmp_path / "real" / "runs" / "a"  # joined, canonical
    assert resolve_path("../runs/a", yaml_dir, normalize=False) == yaml_dir / ".." / "runs" / "a"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/data", yaml_dir) == tmp_path / "data"
