"""The ``context`` option of every head: what a head reads about a crystal besides its graph embedding.

    context: {"composition": bool (False), "known": [task names] ([])}

``composition`` appends the composition features of :mod:`tlgnn.models.composition` (from the batch's atoms or
its ``element_counts``); every task named in ``known`` appends that task's value where the batch has it
(``batch.y``/``batch.y_mask``: a training label, or at prediction time a ``--known`` value) as two columns, the
value standardised with the task's target mean and std (0 where absent) and a presence flag (1/0). A known
task must be a regression task the head does not itself predict (its label would be an input of its own
prediction). This module only checks the option; :class:`tlgnn.models.heads.base.Head` builds the features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tlgnn.models.registry import close_matches

#: Keys of the ``context`` option and their defaults.
CONTEXT_KEYS = ("composition", "known")


@dataclass(frozen=True)
class ContextSpec:
    """A checked ``context`` option: whether composition features are appended and the known tasks, in order."""

    composition: bool = False
    known: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        """True when the head reads nothing besides the graph embedding."""
        return not self.composition and not self.known


def parse_context(context: Mapping[str, Any] | None, tasks: Sequence[Any], outputs: Sequence[str],
                  head: str) -> ContextSpec:
    """Check a head's ``context`` option against the dataset's ``tasks`` and the head's ``outputs``.

    Raises ``ValueError`` naming the key (unknown key, wrong type) or the task (unknown, classification, listed
    twice, or also predicted by the head ``head``).
    """
    where = f"{head} head option context"
    if context is None:
        return ContextSpec()
    if not isinstance(context, Mapping):
        raise ValueError(f"{where} must be a mapping {{composition: bool, known: [tasks]}}, got {context!r}")
    for key in context:
        if key not in CONTEXT_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}{close_matches(str(key), list(CONTEXT_KEYS))}; "
                             f"keys: {', '.join(CONTEXT_KEYS)}")
    composition = context.get("composition", False)
    if not isinstance(composition, bool):
        raise ValueError(f"{where}.composition must be true or false, got {composition!r}")
    known = context.get("known") or []
    if isinstance(known, str) or not isinstance(known, Sequence):
        raise ValueError(f"{where}.known must be a list of task names, got {known!r}")
    by_name = {t.name: t for t in tasks}
    for k, name in enumerate(known):
        if name not in by_name:
            raise ValueError(f"{where}.known[{k}]: unknown task {name!r}{close_matches(str(name), list(by_name))}; "
                             f"tasks: {', '.join(by_name)}")
        if by_name[name].kind != "regression":
            raise ValueError(f"{where}.known[{k}]: task {name!r} is {by_name[name].kind}; known values must be "
                             "regression tasks")
        if name in outputs:
            raise ValueError(f"{where}.known[{k}]: task {name!r} is also predicted by this head; a task's known "
                             "value cannot be an input of its own prediction")
    if len(set(known)) != len(known):
        raise ValueError(f"{where}.known lists a task twice: {list(known)}")
    return ContextSpec(composition=composition, known=tuple(str(n) for n in known))


__all__ = ["CONTEXT_KEYS", "ContextSpec", "parse_context"]
