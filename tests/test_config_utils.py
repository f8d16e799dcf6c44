"""Config loading: unknown keys, wrong types and missing keys are errors that name the dotted key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from tlgnn.utils.config import ConfigError, apply_overrides, from_dict, to_dict


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
