"""``TransferModule``: the LightningModule that trains a :class:`tlgnn.models.TransferModel`.

One masked loss per task (:func:`tlgnn.training.losses.masked_loss`), combined by the head
(``head.combine_losses``); per-task metrics on validation and test (:class:`TaskMetrics`, gathered over the
epoch and over DDP ranks); optimiser and learning-rate schedule from :class:`OptimConfig`.

The constructor takes only plain JSON-able values (model config, task dicts, optimiser/loss settings, graph
settings, target statistics) and saves them as hyper-parameters; :meth:`describe` returns the same information
plus the package version, which :mod:`tlgnn.training.checkpoint` writes into every checkpoint so that a model is
rebuilt from the checkpoint alone. Fine-tuning callbacks (gradual unfreezing) are passed to the trainer by the run
builder (:func:`tlgnn.training.run.fit`), not configured here.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import lightning as L
import torch

from tlgnn.data.tasks import TaskSpec
from tlgnn.errors import TlgnnError
from tlgnn.models.ensemble import is_ensemble
from tlgnn.training.losses import masked_loss
from tlgnn.training.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, TaskMetrics

# TransferModule.on_before_batch_transfer runs the encoder's host-side input checks; the data module has no such
# hook, so Lightning's notice that the module's hook is the one used says nothing a user needs to act on.
warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`")



class NonFiniteLossError(TlgnnError, RuntimeError):
    """A training or validation loss became inf or nan (a diverging run, an expression that overflows)."""


def build_transfer_model(model: Mapping[str, Any], tasks: Sequence[TaskSpec]):
    """The :class:`~tlgnn.models.TransferModel` described by ``model`` (``{"encoder": {...}, "head": {...}}``).

    This is where a run's model comes to life: fine-tuning settings of ``model`` (initial weights,
    freezing) are applied here, after the architecture is built.
    """
    from tlgnn.models import build_model

    return build_model(model["encoder"], model["head"], list(tasks), model.get("ensemble"))


def _task_dicts(tasks: Sequence[TaskSpec | Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [t.to_dict() if isinstance(t, TaskSpec) else dict(t) for t in tasks]


class TransferModule(L.LightningModule):
    """Lightning wrapper of an encoder + head model.

    ``finetune_plan`` (set by :func:`tlgnn.training.finetune.apply_finetuning`, else ``None``) supplies the
    optimiser's parameter groups (its gradual-unfreezing callback is added by the run builder).

    Args:
        model: ``{"encoder": {"name": ..., **options}, "head": {"name": ..., **options}}``.
        tasks: the dataset's ordered tasks (``TaskSpec`` or their dicts); column order of ``batch.y``.
        optim: :class:`~tlgnn.training.config.OptimConfig` as a dict.
        loss: :class:`~tlgnn.training.config.LossConfig` as a dict.
        graph: the graph builder settings (``CrystalGraphBuilder.settings``) the model was trained with.
        target_stats: ``{"mean": {task: value}, "std": {task: value}}`` of the training split, physical units,
            optionally with ``"pairs": {high: {low: [mean, std]}}`` of ``high - low`` on rows labelled with both.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        optim: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        graph: Mapping[str, Any] | None = None,
        target_stats: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        tasks_plain = _task_dicts(tasks)
        self.save_hyperparameters(
            {
                "model": {k: dict(v) for k, v in model.items()},
                "tasks": tasks_plain,
                "optim": dict(optim or {}),
                "loss": dict(loss or {}),
                "graph": dict(graph or {}),
                "target_stats": {k: dict(v) for k, v in (target_stats or {}).items()},
            }
        )
        self.tasks = [TaskSpec.from_dict(t) for t in tasks_plain]
        self.model = build_transfer_model(self.hparams["model"], self.tasks)
        # defaults that follow other options are recorded as resolved, so that reading the checkpoints never takes
        # them for files written before the option existed (Head.upgrade_options)
        head_spec = self.hparams["model"]["head"]
        for key, value in self.model.head.recorded_options().items():
            head_spec.setdefault(key, value)
        if target_stats:
            self.set_target_stats(target_stats.get("mean", {}), target_stats.get("std", {}), target_stats.get("pairs"))
        self.outputs = list(self.model.head.outputs)
        self.val_metrics = TaskMetrics(self.tasks)
        self.test_metrics = TaskMetrics(self.tasks)
        self._loss_std: dict[str, float] | None = None
        self.finetune_plan: Any = None
        self._nonfinite: dict[str, torch.Tensor] = {}  # stage -> flags [T + 1] (tasks, combined) on the device

    # ------------------------------------------------------------------ statistics
    def set_target_stats(self, mean: Mapping[str, float], std: Mapping[str, float],
                         pairs: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> None:
        """Per-task training-split mean/std (physical units) for the head's normalisation and the loss, and the
        statistics of task differences (``pairs``, see :meth:`Head.set_target_stats`)."""
        self.model.head.set_target_stats(dict(mean), dict(std), pairs)
        self._loss_std = None
        self.hparams["target_stats"] = {"mean": dict(mean), "std": dict(std),
                                        "pairs": self.model.head.paired_stats()}

    @property
    def loss_std(self) -> dict[str, float]:
        """Per-task std that scales regression errors in the loss (read from the head's buffers)."""
        if self._loss_std is None:
            self._loss_std = self.model.head.target_stats()[1]
        return self._loss_std

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """``{task: prediction}``: regression [B] in physical units, classification logits [B, C]."""
        return self.model(batch)

    def embed(self, batch: Any) -> torch.Tensor:
        """Graph embeddings [B, d] from the encoder."""
        return self.model.embed(batch)

    def _losses(self, preds: Mapping[str, torch.Tensor], batch: Any,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses of ``preds`` on the batch's labels where ``mask`` (default ``batch.y_mask``)."""
        cfg = self.hparams["loss"]
        return masked_loss(
            preds,
            batch.y,
            batch.y_mask if mask is None else mask,
            self.tasks,
            std=self.loss_std,
            regression=cfg.get("regression", "mse"),
            huber_delta=float(cfg.get("huber_delta", 1.0)),
        )

    def _zero_loss(self) -> torch.Tensor:
        """An exact zero that still reaches every trainable parameter (keeps DDP gradient sync in step)."""
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device))

    # ------------------------------------------------------------------ steps
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Input checks on the host batch (see ``Encoder.prepare_batch``): none of them syncs the GPU."""
        return self.model.prepare_batch(batch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        head = self.model.head
        size = int(batch.num_graphs)
        if is_ensemble(head):  # each member learns from its own predictions (and rows)
            loss, losses = head.training_loss(self.model.encode(batch), batch, self._losses)
        else:
            losses = self._losses(self.model(batch), batch)
            loss = head.combine_losses(losses) if losses else None
        if loss is None:
            return self._zero_loss()
        self._watch_finite("train", losses, loss)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        for name, value in losses.items():
            self.log(f"train/{name}/loss", value, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _eval_step(self, batch: Any, stage: str, metrics: TaskMetrics) -> None:
        preds = self.model(batch)
        metrics.update(preds, batch.y, batch.y_mask)
        losses = self._losses(preds, batch)
        if losses:
            loss = self.model.head.combine_losses(losses)
            if stage == "val":
                self._watch_finite(stage, losses, loss)
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=int(batch.num_graphs),
                     sync_dist=True)

    # ------------------------------------------------------------------ non-finite losses
    def _watch_finite(self, stage: str, losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> None:
        """Remember (on the device, no host sync) which task losses, or the combined one, were not finite in the
        first step where any was (later steps run on the weights that step broke)."""
        zero = total.new_zeros((), dtype=torch.float32)
        values = [losses[t.name].detach().float() if t.name in losses else zero for t in self.tasks]
        flags = ~torch.isfinite(torch.stack([*values, total.detach().float()]))
        seen = self._nonfinite.get(stage)
        self._nonfinite[stage] = flags if seen is None else torch.where(seen.any(), seen, flags)

    def check_finite(self, stage: str) -> None:
        """Raise :class:`NonFiniteLossError` naming the tasks (and expressions) and the epoch if a ``stage``
        ("train" or "val") loss was inf or nan since the last check. Called at the end of each training and
        validation epoch, before that epoch's checkpoints are written, so ``last.ckpt`` keeps the last good
        weights; one host sync per epoch."""
        flags = self._nonfinite.pop(stage, None)
        if flags is None:
            return
        bad = flags.cpu()
        trainer = self._trainer
        if trainer is not None:
            if not trainer.strategy.reduce_boolean_decision(bool(bad.any()), all=False):
                return
        elif not bool(bad.any()):
            return
        names = [self.model.head.output_label(t.name) for t, flag in zip(self.tasks, bad[:-1].tolist()) if flag]
        what = ", ".join(names) or ("the combined loss" if bool(bad[-1]) else "a task on another process")
        kind = "training" if stage == "train" else "validation"
        raise NonFiniteLossError(f"non-finite {kind} loss (inf or nan) in epoch {self.current_epoch} for {what}; "
                                 "lower optim.lr, check the expressions and the labels")

    def on_train_epoch_end(self) -> None:
        self.check_finite("train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def logged_metric_names(self) -> list[str]:
        """Every epoch-level name this module logs (what ``monitor`` settings may name): ``train/loss``,
        ``train/<task>/loss``, ``val/loss`` and ``val/<task>/<metric>`` for each task the head outputs."""
        names = ["val/loss", "train/loss"] + [f"train/{t.name}/loss" for t in self.tasks]
        for task in self.tasks:
            if task.name in self.outputs:
                kinds = CLASSIFICATION_METRICS if task.kind == "classification" else REGRESSION_METRICS
                names += [f"val/{task.name}/{metric}" for metric in kinds]
        return names

    def _log_metrics(self, stage: str, metrics: TaskMetrics) -> dict[str, dict[str, float]]:
        scores = metrics.compute()
        metrics.reset()
        for task, values in scores.items():
            if task not in self.outputs:
                continue
            for name, value in values.items():
                if name == "n" or not math.isfinite(value):
                    continue
                self.log(f"{stage}/{task}/{name}", float(value), on_epoch=True, sync_dist=True)
        return scores

    def on_validation_epoch_end(self) -> None:
        self.check_finite("train")  # validation ends a training epoch before its checkpoints are written
        self.check_finite("val")
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.last_test_scores = {k: v for k, v in self._log_metrics("test", self.test_metrics).items()
                                 if k in self.outputs}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self.model(batch)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        from tlgnn.training.optim import build_optimizer, build_scheduler

        cfg = dict(self.hparams["optim"])
        plan = self.finetune_plan  # fine-tuning: encoder and head groups with their own learning rates
        params = plan.param_groups(self, float(cfg.get("lr", 1e-3))) if plan is not None else \
            [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, cfg)
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total_steps // max(1, int(self.trainer.max_epochs or 1)))
        scheduler = build_scheduler(optimizer, cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ checkpoints
    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this model for prediction (stored in every checkpoint by
        :mod:`tlgnn.training.checkpoint`)."""
        from tlgnn import __version__

        mean, std = self.model.head.target_stats()
        return {
            "version": __version__,
            "tasks": [t.to_dict() for t in self.tasks],
            "outputs": list(self.outputs),
            "model": {k: dict(v) for k, v in self.hparams["model"].items()},
            "graph": dict(self.hparams["graph"]),
            "target_stats": {"mean": mean, "std": std, "pairs": self.model.head.paired_stats()},
            "loss": dict(self.hparams["loss"]),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._loss_std = None  # the head's buffers are about to be replaced


__all__ = ["NonFiniteLossError", "TransferModule", "build_transfer_model"]
