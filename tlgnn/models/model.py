"""TransferModel = encoder + head, with freezing helpers for fine-tuning, and ``build_model`` from configs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tlgnn.data.embedded import is_embedded
from tlgnn.models.encoders import Encoder, EncoderOutput, build_encoder
from tlgnn.models.ensemble import build_ensemble, ensemble_spec, member_options
from tlgnn.models.heads import HEADS, Head, build_head


class TransferModel(nn.Module):
    """``forward(batch) = head(encoder(batch), batch)``: {task: prediction}.

    ``freeze_encoder(k)`` freezes the first k of ``encoder.layer_groups()`` (all when ``None``): their
    parameters stop requiring gradients and the frozen modules stay in eval mode (batch-norm running
    statistics fixed, dropout off) even when ``train()`` is called.
    """

    def __init__(self, encoder: Encoder, head: Head) -> None:
        super().__init__()
        if head.in_dim != encoder.out_dim:
            raise ValueError(f"head in_dim {head.in_dim} does not match encoder out_dim {encoder.out_dim}")
        self.encoder = encoder
        self.head = head
        self.frozen_groups = 0
        self.config: dict[str, Any] | None = None

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.head(self.encode(batch), batch)

    def encode(self, batch: Any) -> EncoderOutput:
        """The encoder's node and graph embeddings; a batch of stored embeddings (``batch.graph_emb``, see
        :mod:`tlgnn.data.embedded`) is used as the encoder's output (``node_emb`` is then ``None``)."""
        if is_embedded(batch):
            return EncoderOutput(node_emb=None, graph_emb=batch.graph_emb)  # type: ignore[arg-type]
        return self.encoder(batch)

    def embed(self, batch: Any) -> torch.Tensor:
        """Graph embeddings [B, d] (the transfer seam)."""
        return self.encode(batch).graph_emb

    def prepare_batch(self, batch: Any) -> Any:
        """The encoder's host-side input checks (:meth:`Encoder.prepare_batch`) for a graph batch; a batch of
        stored embeddings passes unchanged."""
        return batch if is_embedded(batch) else self.encoder.prepare_batch(batch)

    def freeze_encoder(self, n_groups: int | None = None) -> None:
        """Freeze the first ``n_groups`` encoder layer groups (``None``: the whole encoder); undo others."""
        groups = self.encoder.layer_groups()
        k = len(groups) if n_groups is None else int(n_groups)
        if not 0 <= k <= len(groups):
            raise ValueError(f"freeze_encoder: n_groups must be in 0..{len(groups)} (or None), got {n_groups}")
        self.unfreeze_encoder()
        for group in groups[:k]:
            for p in group.parameters():
                p.requires_grad_(False)
        self.frozen_groups = k
        self.train(self.training)

    def unfreeze_encoder(self) -> None:
        """Make every encoder parameter trainable again."""
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        self.frozen_groups = 0
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if self.frozen_groups:
            groups = self.encoder.layer_groups()
            if self.frozen_groups == len(groups):
                self.encoder.eval()
            for group in groups[: self.frozen_groups]:
                group.eval()
        return self


def _split_config(config: Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError(f"model.{what}: needs a mapping with a 'name' key, got {config!r}")
    options = dict(config)
    return options.pop("name"), options


def _prefixed(err: Exception, where: str) -> Exception:
    """The same error with ``where`` in front of its message (subclasses such as ExpressionError kept as is)."""
    if type(err) in (TypeError, ValueError):
        return type(err)(f"{where}: {err}")
    return err


def build_model(encoder: Mapping[str, Any], head: Mapping[str, Any], tasks: Sequence[Any],
                ensemble: Mapping[str, Any] | None = None) -> TransferModel:
    """A model from config dicts ``{"name": ..., **options}`` and the dataset's ordered task list; with an
    ``ensemble`` spec of more than one member, the members of :mod:`tlgnn.models.ensemble` as one model."""
    enc_name, enc_options = _split_config(encoder, "encoder")
    head_name, head_options = _split_config(head, "head")
    spec = ensemble_spec(ensemble)

    def one_encoder() -> Encoder:
        try:
            return build_encoder(enc_name, **enc_options)
        except (TypeError, ValueError) as err:
            raise _prefixed(err, "model.encoder") from err

    def one_head(i: int, in_dim: int) -> Head:
        try:
            options = member_options(HEADS.check(head_name, head_options), head_options, i) if spec else head_options
            return build_head(head_name, in_dim, tasks, **options)
        except (TypeError, ValueError) as err:
            raise _prefixed(err, "model.head") from err

    if spec is None:
        enc = one_encoder()
        model = TransferModel(enc, one_head(0, enc.out_dim))
    else:
        model = TransferModel(*build_ensemble(one_encoder, one_head, spec))
    model.config = {"encoder": dict(encoder), "head": dict(head), **({"ensemble": spec} if spec else {})}
    return model
