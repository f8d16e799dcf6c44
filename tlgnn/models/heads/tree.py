"""Tree head: gradient-boosted trees (LightGBM) on the graph embedding, stored as tensors and evaluated in torch.

Two modes:

- ``task: name``: one booster, ``y = F(x)``; a two-class classification task gets a logistic booster whose trees
  sum to the logit ``z`` of the second class: the head's logits are ``[0, z]`` (probability σ(z));
- ``chain: [low, high]`` (Δ-learning, as the difference head): ``y_low = F_low(x)`` fitted on the rows with a
  ``low`` label, ``Δ = F_Δ(x)`` fitted on the rows with both labels (target ``y_high - y_low``), and
  ``y_high = ŷ_low + Δ``. With ``use_known_low: true``, ``ŷ_low`` is the ``low`` label wherever the batch has it
  (``batch.y_mask``), else ``F_low(x)``, and ``F_Δ`` also takes ``ŷ_low`` as its last input feature
  (``Δ(x, y_low)``; trained on the known labels).

  With ``delta_line: true`` the correction starts from a straight line in the low value it is added to,

      Δ = α + β·ŷ_low + F_Δ(x[, ŷ_low])

  (α, β by least squares on the rows with both labels; ``F_Δ`` then fits what the line leaves, early-stopped on
  the validation rows). Few high-fidelity labels cannot grow useful trees but fix two numbers well (the scaling
  relation between fidelities, e.g. HSE ≈ α + (1 + β)·PBE); many labels let the trees correct the line.

Early stopping: each booster stops on the validation rows of its task, except a dense task with fewer than
:data:`MIN_STOPPING_ROWS` of them and ten times as many training rows (the low fidelity, when the validation
split was drawn from the scarce task's crystals): it stops on a fixed tenth of its own training rows.

``x = head.tree_inputs(enc, batch)``: the graph embedding followed by the head's raw context (Contract A:
composition features and known values, NaN where absent; the trees send NaN to the side LightGBM learned).

The trees are not learned by gradient descent: the head has no parameters, ``fits_directly`` is True and the
run calls :meth:`TreeHead.fit_arrays` with the inputs and labels of its training and validation rows. The fitted
trees live in buffers (:class:`tlgnn.models.trees.TreeEnsemble`), so a checkpoint's ``state_dict`` holds them
(no pickle) and predicting needs no LightGBM. All values are in physical units (the target statistics of the
base class are not used).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from tlgnn.baselines.affine import AffineMap
from tlgnn.models.boosting import MIN_STOPPING_ROWS, BoosterOptions, fit_booster, held_out_stopping
from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.base import Head, find_task, register_head
from tlgnn.models.trees import TreeEnsemble, lightgbm_arrays


@register_head("tree")
class TreeHead(Head):
    """Options: ``task`` (one regression or two-class task; may be omitted when the dataset has one task) or ``chain``
    ([low, high] regression tasks), ``use_known_low`` (chain only, False), ``condition_on_low`` (chain only,
    default ``use_known_low``: Δ also reads the low value it is added to, the known one where given, else the low
    trees' prediction; in training the known label with ``use_known_low``, else the low trees' in-sample
    prediction), ``delta_line`` (chain only, False: Δ starts from the least-squares line α + β·ŷ_low, stored in
    the buffer ``line`` [2]), and the LightGBM options of
    :class:`tlgnn.models.boosting.BoosterOptions` (``n_estimators`` 2000, ``learning_rate`` 0.03, ``num_leaves``
    31, ``max_depth`` -1, ``min_child_samples`` 20, ``subsample`` 0.8, ``subsample_freq`` 1, ``colsample`` 0.5,
    ``reg_lambda`` 1.0, ``early_stopping_rounds`` 100 (validation MAE), ``objective`` "regression" | "l1" |
    "huber", ``seed`` 0, ``n_jobs`` 0 = LightGBM's own thread count).

    ``boosters`` holds the ``lightgbm.Booster`` objects of the last :meth:`fit_arrays` call (not saved; a loaded
    head has ``{}``).
    """

    fits_directly = True

    def __init__(
        self, in_dim: int, tasks: Sequence[Any], *, task: str | None = None, chain: Sequence[str] | None = None,
        use_known_low: bool = False, condition_on_low: bool | None = None, delta_line: bool = False,
        n_estimators: int = 2000, learning_rate: float = 0.03, num_leaves: int = 31,
        max_depth: int = -1, min_child_samples: int = 20, subsample: float = 0.8, subsample_freq: int = 1,
        colsample: float = 0.5, reg_lambda: float = 1.0, early_stopping_rounds: int = 100,
        objective: str = "regression", seed: int = 0, n_jobs: int = 0, **common: Any,
    ) -> None:
        tasks = list(tasks)
        outputs = _outputs(tasks, task, chain, use_known_low)
        if common.get("weighting", "fixed") == "uncertainty":
            raise ValueError("tree head option weighting: 'uncertainty' learns loss weights by gradient descent; "
                             "the tree head is fitted directly (use 'fixed')")
        self.options = BoosterOptions(
            n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves, max_depth=max_depth,
            min_child_samples=min_child_samples, subsample=subsample, subsample_freq=subsample_freq,
            colsample=colsample, reg_lambda=reg_lambda, early_stopping_rounds=early_stopping_rounds,
            objective=objective, seed=seed, n_jobs=n_jobs)
        super().__init__(in_dim, tasks, outputs, **common)
        self.chain = list(chain) if chain is not None else None
        self.task = None if self.chain else outputs[0]
        self.use_known_low = bool(use_known_low)
        self.condition_on_low = self.use_known_low if condition_on_low is None else bool(condition_on_low)
        if self.condition_on_low and self.chain is None:
            raise ValueError("tree head option condition_on_low applies to chain mode only (chain: [low, high])")
        self.delta_line = bool(delta_line)
        if self.delta_line and self.chain is None:
            raise ValueError("tree head option delta_line applies to chain mode only (chain: [low, high])")
        if self.delta_line:  # only then: checkpoints of heads without the option keep their exact state_dict
            self.register_buffer("line", torch.zeros(2, dtype=torch.float64))
        names = ("low", "delta") if self.chain else ("main",)
        self.forests = nn.ModuleDict({name: TreeEnsemble() for name in names})
        self.boosters: dict[str, Any] = {}

    # ----------------------------------------------------------------- inputs
    def tree_inputs(self, enc: EncoderOutput, batch: Any) -> torch.Tensor:
        """The trees' inputs [B, f]: ``[enc.graph_emb, raw context]`` (what :meth:`fit_arrays` takes as rows); the
        raw context (:meth:`Head.raw_context`) is the composition features and known values, NaN where absent."""
        g = enc.graph_emb
        if self.context_dim == 0:
            return g
        return torch.cat([g, self.raw_context(batch).to(g.dtype)], 1)

    def reads_known(self) -> list[str]:
        """``context.known`` and, with ``use_known_low``, the chain's low task (its known values are used)."""
        return [*super().reads_known(), *(self.chain[:1] if self.chain is not None and self.use_known_low else [])]

    @property
    def fitted(self) -> bool:
        """Whether every booster of the head has trees."""
        return all(forest.num_trees > 0 for forest in self.forests.values())

    # ----------------------------------------------------------------- prediction
    def _evaluate(self, x: torch.Tensor,
                  known_low: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Predictions (float64 [B], physical units) from inputs ``x`` [B, f]; chain mode adds ``"__delta"``.

        ``known_low = (values [B], present [B])``: the low labels, used only with ``use_known_low``."""
        if not self.fitted:
            raise RuntimeError("tree head is not fitted: its trees are grown by fit_arrays(x, y, mask, x_val, "
                               "y_val, mask_val) (the run fits tree heads directly), or loaded from a checkpoint")
        if self.chain is None:
            return {self.task: self.forests["main"](x)}
        low_hat = self.forests["low"](x)
        used = low_hat
        if self.use_known_low and known_low is not None:
            values, present = known_low
            used = torch.where(present.to(low_hat.device).bool(), values.to(low_hat), low_hat)
        if self.condition_on_low:
            x = torch.cat([x.to(used.dtype), used[:, None]], 1)
        delta = self.forests["delta"](x)
        if self.delta_line:
            delta = delta + self.line[0] + self.line[1] * used
        return {self.chain[0]: low_hat, self.chain[1]: used + delta, "__delta": delta}

    def _predict(self, enc: EncoderOutput, batch: Any) -> dict[str, torch.Tensor]:
        wants_known = self.chain is not None and self.use_known_low and batch is not None
        known = self.known_label(batch, self.chain[0]) if wants_known else None
        out = self._evaluate(self.tree_inputs(enc, batch), known)
        if self.task is not None and self.task_by_name[self.task].kind == "classification":  # logits [0, z]
            z = out[self.task]
            out[self.task] = torch.stack([torch.zeros_like(z), z], 1)
        return {name: value.to(enc.graph_emb.dtype) for name, value in out.items()}

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self._predict(enc, batch).items() if name != "__delta"}

    def extras(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """``{"delta_<high>": Δ [B]}`` in chain mode (physical units), else ``{}``."""
        if self.chain is None:
            return {}
        return {f"delta_{self.chain[1]}": self._predict(enc, batch)["__delta"]}

    # ----------------------------------------------------------------- fitting
    def fit_arrays(self, x_train: np.ndarray, y: np.ndarray, mask: np.ndarray, x_val: np.ndarray | None = None,
                   y_val: np.ndarray | None = None, mask_val: np.ndarray | None = None) -> dict[str, Any]:
        """Grow the trees on rows ``x_train`` [n, f] (from :meth:`tree_inputs`) with labels ``y`` [n, T] /
        ``mask`` [n, T] (``batch.y``/``batch.y_mask`` columns in the dataset's task order); the validation rows
        (optional) drive early stopping and are scored.

        Returns the history: ``best_iteration``, ``n_train``, ``n_val`` and ``seconds`` per booster (named by its
        task, ``delta_<high>`` for Δ) and ``val_mae`` per output (physical units; a two-class task: the mean
        |P(second class) − label|; ``None`` without labelled validation rows), computed with the stored tensor
        trees exactly as :meth:`forward` predicts.
        """
        x, y, mask = self._checked(x_train, y, mask, "training")
        if x_val is None or len(x_val) == 0:
            x_val, y_val, mask_val = x[:0], y[:0], mask[:0]
        xv, yv, mv = self._checked(x_val, y_val, mask_val, "validation")
        if xv.shape[1] != x.shape[1]:
            raise ValueError(f"tree head fit_arrays: validation rows have {xv.shape[1]} features, training rows "
                             f"{x.shape[1]}")
        if self.chain is None:
            info = {self.task: self._grow("main", x, y, mask, xv, yv, mv, self.task, self.task)}
        else:
            info = self._grow_chain(x, y, mask, xv, yv, mv)
        history = {key: {name: item[key] for name, item in info.items()}
                   for key in ("best_iteration", "n_train", "n_val", "seconds")}
        history["val_mae"] = self._val_mae(xv, yv, mv)
        return history

    def _checked(self, x: Any, y: Any, mask: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        y, mask = np.asarray(y, dtype=np.float64), np.asarray(mask).astype(bool)
        n = x.shape[0] if x.ndim == 2 else -1
        if n < 0 or y.shape != (n, len(self.tasks)) or mask.shape != y.shape:
            raise ValueError(f"tree head fit_arrays: {what} arrays must be x [n, f], y and mask [n, "
                             f"{len(self.tasks)}] (one column per task); got {x.shape}, {y.shape}, {mask.shape}")
        return x, y, mask

    def _grow(self, forest: str, x: np.ndarray, y: np.ndarray, mask: np.ndarray, xv: np.ndarray, yv: np.ndarray,
              mv: np.ndarray, task: str, label: str) -> dict[str, Any]:
        """Fit the booster ``forest`` on the rows labelled with ``task``; store its trees."""
        col = self.task_index[task]
        rows, val = np.flatnonzero(mask[:, col]), mv[:, col]
        x_fit, y_fit, x_stop, y_stop = x[rows], y[rows, col], xv[val], yv[val, col]
        if len(y_stop) < MIN_STOPPING_ROWS and len(rows) >= 10 * MIN_STOPPING_ROWS:
            # a dense task (the low fidelity) with few validation labels (they are drawn from the scarce task's
            # rows): early-stop on a fixed tenth of its own training rows instead of a handful of crystals
            x_fit, y_fit, x_stop, y_stop = held_out_stopping(x_fit, y_fit, 0.1, self.options.seed)
        booster, info = fit_booster(x_fit, y_fit, x_stop, y_stop, self.options, f"tree head {label}",
                                    binary=self.task_by_name[task].kind == "classification")
        self.forests[forest].set_arrays(lightgbm_arrays(booster.dump_model(num_iteration=info["best_iteration"])))
        self.boosters[forest] = booster
        return info

    def _grow_chain(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, xv: np.ndarray, yv: np.ndarray,
                    mv: np.ndarray) -> dict[str, dict[str, Any]]:
        """Fit the low booster, then Δ on the rows with both labels (target high - low)."""
        low, high = self.chain
        lo, hi = self.task_index[low], self.task_index[high]
        info = {low: self._grow("low", x, y, mask, xv, yv, mv, low, f"task {low!r}")}

        def delta_rows(x_, y_, m_):
            """Δ's inputs, target and the low value it is added to, on the rows with both labels."""
            both = m_[:, lo] & m_[:, hi]
            # the low value Δ is added to (and reads, with condition_on_low): the label where known
            # (use_known_low), else the low booster's prediction (on its own training rows: in-sample)
            low_in = y_[both, lo] if self.use_known_low else self._low_prediction(x_[both])
            inputs = np.concatenate([x_[both], low_in[:, None]], 1) if self.condition_on_low else x_[both]
            return inputs, y_[both, hi] - y_[both, lo], low_in

        (xd, yd, ld), (xdv, ydv, ldv) = delta_rows(x, y, mask), delta_rows(xv, yv, mv)
        if self.delta_line:  # the trees fit what the least-squares line in the low value leaves
            line = fit_line(ld, yd)
            self.line.copy_(torch.as_tensor(line, dtype=torch.float64))
            yd, ydv = yd - (line[0] + line[1] * ld), ydv - (line[0] + line[1] * ldv)
        booster, fit = fit_booster(xd, yd, xdv, ydv, self.options, f"tree head delta_{high} (rows with {low} and "
                                   f"{high})")
        self.forests["delta"].set_arrays(lightgbm_arrays(booster.dump_model(num_iteration=fit["best_iteration"])))
        self.boosters["delta"] = booster
        info[f"delta_{high}"] = fit
        return info

    def _low_prediction(self, x: np.ndarray) -> np.ndarray:
        """The stored low trees' prediction for rows ``x`` (float64 [n])."""
        forest = self.forests["low"]
        with torch.no_grad():
            return forest(torch.as_tensor(x, device=forest.root.device)).cpu().numpy().astype(np.float64)

    def _val_mae(self, xv: np.ndarray, yv: np.ndarray, mv: np.ndarray) -> dict[str, float | None]:
        """MAE per output on the labelled validation rows, from the stored trees (as :meth:`forward`)."""
        device = next(iter(self.forests.values())).root.device
        known = None
        if self.chain is not None:
            lo = self.task_index[self.chain[0]]
            known = (torch.as_tensor(np.nan_to_num(yv[:, lo]), device=device),
                     torch.as_tensor(mv[:, lo], device=device))
        with torch.no_grad():
            preds = self._evaluate(torch.as_tensor(xv, device=device), known) if len(xv) else {}
        scores: dict[str, float | None] = {}
        for name in self.outputs:
            col = self.task_index[name]
            rows = torch.as_tensor(mv[:, col], device=device)
            if not len(xv) or not bool(rows.any()):
                scores[name] = None
                continue
            target = torch.as_tensor(yv[:, col], device=device)
            pred = preds[name]
            if self.task_by_name[name].kind == "classification":  # |P(second class) − label|
                pred = torch.sigmoid(pred)
            scores[name] = float((pred[rows] - target[rows]).abs().mean())
        return scores


def fit_line(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares ``[α, β]`` of ``y ≈ α + β·x`` (:class:`tlgnn.baselines.affine.AffineMap`); ``[mean(y), 0]``
    when ``x`` has fewer than two distinct values."""
    if len(np.unique(x)) < 2:
        return np.array([float(np.mean(y)) if len(y) else 0.0, 0.0])
    line = AffineMap.fit(x, y)
    return np.array([line.intercept, line.slope])


def _outputs(tasks: list[Any], task: str | None, chain: Sequence[str] | None, use_known_low: bool) -> list[str]:
    """The head's outputs from its mode options (``ValueError`` naming the option)."""
    if task is not None and chain is not None:
        raise ValueError("tree head: give option task (one task) or option chain ([low, high]), not both")
    if chain is None:
        if use_known_low:
            raise ValueError("tree head option use_known_low applies to chain mode only (chain: [low, high])")
        if task is None:
            if len(tasks) != 1:
                raise ValueError(f"tree head: option task (or chain) is required when there are {len(tasks)} "
                                 f"tasks ({', '.join(t.name for t in tasks)})")
            task = tasks[0].name
        spec = find_task(tasks, task, "tree head option task")
        if spec.kind == "classification" and len(spec.classes) != 2:
            raise ValueError(f"tree head option task: {task!r} has {len(spec.classes)} classes; the tree head "
                             "classifies two (a logistic booster)")
        return [task]
    if isinstance(chain, str) or len(chain) != 2 or chain[0] == chain[1]:
        raise ValueError(f"tree head option chain must be two different task names [low, high], got {chain!r}")
    for k, name in enumerate(chain):
        find_task(tasks, name, f"tree head option chain[{k}]", kind="regression")
    return list(chain)
