"""The repository root: every test finds the shipped data/, configs/, scripts/ and docs from here."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
