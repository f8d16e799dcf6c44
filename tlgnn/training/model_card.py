"""Publishing a pretrained encoder: held-out scores, the compact checkpoint with its JSON metadata, and the
``MODEL_CARD.md`` rendered from every such JSON in the folder (``data/pretrained/``). Used by
``scripts/pretrain.py``, which only selects the data and trains through :func:`tlgnn.training.run.fit`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import lightning as L

from tlgnn.training.checkpoint import export_checkpoint
from tlgnn.training.inference import predict_batches
from tlgnn.training.scores import regression_metrics

#: the ``kind`` of the JSON metadata a pretrained checkpoint is published with
CARD_KIND = "tlgnn-pretrained"


def task_scores(module: Any, loader: Any) -> dict[str, dict[str, float]]:
    """MAE / RMSE / R² (and ``n``) per regression task the module predicts, in physical units, over the labelled
    rows of ``loader``; the module's train/eval mode is kept."""
    got = predict_batches(module, loader)
    scores = {}
    for k, task in enumerate(module.tasks):
        if task.name in got.preds and task.kind == "regression":
            m = got.mask[:, k]
            scores[task.name] = regression_metrics(y_true=got.y[m, k], y_pred=got.preds[task.name][m])
    return scores


def write_pretrained(module: Any, out: Path, name: str, info: dict[str, Any]) -> Path:
    """Write ``<name>.ckpt`` (compact), its metadata ``<name>.json`` and the re-rendered ``MODEL_CARD.md`` into
    ``out``; returns the checkpoint path."""
    ckpt = export_checkpoint(module, out / f"{name}.ckpt", info=info)
    info = {**info, "file": ckpt.name, "size_bytes": ckpt.stat().st_size}
    (out / f"{name}.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    (out / "MODEL_CARD.md").write_text(render_card(out))
    return ckpt


class PublishBest(L.Callback):
    """Publishes the module (:func:`write_pretrained`) whenever ``val/loss`` improves, so an interrupted run still
    leaves a usable checkpoint and its card. ``loaders()`` gives the (test, validation) loaders, made once;
    ``make_info(module, epochs, metrics, status, best_epoch=)`` the metadata."""

    def __init__(self, out: Path, name: str, loaders: Callable[[], tuple[Any, Any]],
                 make_info: Callable[..., dict[str, Any]]) -> None:
        self.out, self.name, self._make_loaders, self.make_info = out, name, loaders, make_info
        self.best = math.inf
        self.loaders: tuple[Any, Any] | None = None  # made once: worker start-up is not paid per export

    @property
    def state_key(self) -> str:
        """The key checkpoints written by ``scripts/pretrain.py``'s former callback used (they resume alike)."""
        return "ExportBest.__new__.<locals>._ExportBest"

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get("val/loss")
        if value is None or not float(value) < self.best:
            return
        self.best = float(value)
        if self.loaders is None:
            self.loaders = self._make_loaders()
        test, val = (task_scores(pl_module, loader) for loader in self.loaders)
        epoch = int(trainer.current_epoch)
        info = self.make_info(pl_module, epoch + 1, {"test": test, "val": val}, "in progress", best_epoch=epoch)
        write_pretrained(pl_module, self.out, self.name, info)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state.get("best", math.inf))


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render_card(out: Path) -> str:
    """MODEL_CARD.md from every ``*.json`` written by :func:`write_pretrained` in ``out``."""
    cards = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    cards = [c for c in cards if c.get("kind") == CARD_KIND]
    used = sorted({c["data"]["used"] for c in cards if "used" in c.get("data", {})})
    count = " / ".join(f"{n:,}" for n in used) or "the"
    lines = _introduction(count)
    for c in cards:
        lines += _checkpoint_section(c)
    return "\n".join(lines + _usage())


def _introduction(count: str) -> list[str]:
    return [
        "# Pretrained tlgnn encoders",
        "",
        f"Encoders pretrained on the dense, cheap PBE-level labels of {count} Materials Project crystals, for",
        "fine-tuning on scarce labels (`model.init_from`, see docs/finetuning.md) and for prediction",
        "(`tlgnn.load_model`). Written by `scripts/pretrain.py`; this card is generated from the `*.json` files next",
        "to the checkpoints.",
        "",
        "## Data (all checkpoints)",
        "",
        "* Structures and labels: source A of `mp_multifidelity_bandgap` — Materials Project crystals (CC BY 4.0) as",
        "  distributed by `kdmsit/mt-cgcnn` (MIT), commit bdfaf106; MP ~2019-20 labels `band_gap_pbe` (PBE/GGA(+U)",
        "  gap, eV) -> task `gap_pbe_mp`, `formation_energy_per_atom` (eV/atom) -> task `e_form_mp`, `efermi` (PBE",
        "  Fermi level, eV) -> task `efermi_mp`, `total_magnetization` (μB per cell) / number of sites -> task",
        "  `magmom_mp` (μB/atom); each checkpoint lists the tasks it was trained on. Cite Sanyal et al.,",
        "  arXiv:1811.05660; Jain et al., APL Mater. 1, 011002 (2013). The dataset's 6,613-row held-back slice",
        "  was never available here.",
        "* **Leakage control:** every crystal with an HSE06, GLLB-SC or SCAN gap (MEGNet multi-fidelity set, Chen et",
        "  al., Nat. Comput. Sci. 1, 46 (2021)) or a formula-matched experimental gap / metal class (matbench",
        "  expt_gap / expt_is_metal) is excluded from pretraining altogether, so none of the crystals the transfer",
        "  benchmarks score had its PBE gap or formation energy seen by the encoder. Polymorphs (same reduced",
        "  formula) of those crystals are excluded as well, since the benchmarks hold out whole formula groups.",
        "* Split of the remaining crystals: grouped by reduced formula (polymorphs stay together), seed 0:",
        "  90 % train / 5 % validation (best epoch) / 5 % test (held out; metrics below).",
        "",
    ]


def _checkpoint_section(c: dict[str, Any]) -> list[str]:
    """The card's section of one published checkpoint (its JSON metadata ``c``)."""
    d, t = c["data"], c["training"]
    lines = [
        f"## `{c['file']}` ({c['encoder']['name']})",
        "",
        f"* Status: **{c['status']}** ({t['epochs_completed']} epochs, best epoch {t.get('best_epoch')}); "
        f"file {c['size_bytes'] / 1e6:.2f} MB (fp32 weights, no optimiser state), "
        f"{c['n_parameters']:,} parameters.",
        f"* Crystals: {d['rows_in_source']:,} in the source, {d['excluded']:,} excluded "
        f"({', '.join(f'{k}: {v:,}' for k, v in d['excluded_by'].items())}), {d['used']:,} used"
        + (f" (limited to {d['limit']:,})" if d.get("limit") else "") + f"; split train/val/test "
        f"{d['split']['train']:,} / {d['split']['val']:,} / {d['split']['test']:,}.",
        "",
        "| task | unit | test MAE | test RMSE | test R² | n | val MAE |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, s in c["metrics"]["test"].items():
        unit = c["units"].get(task, "")
        v = c["metrics"].get("val", {}).get(task, {})
        lines.append(f"| {task} | {unit} | {_fmt(s['mae'])} | {_fmt(s['rmse'])} | {_fmt(s['r2'])} | {s['n']:,} "
                     f"| {_fmt(v.get('mae'))} |")
    lines += [
        "",
        f"* Baseline (predict the training mean): test MAE "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in c["metrics"]["mean_baseline_mae"].items()) + ".",
        f"* Encoder: `{json.dumps(c['encoder'])}`; head: `{json.dumps(c['head'])}`; graphs: "
        f"`{json.dumps(c['graph'])}`.",
        f"* Training: AdamW lr {c['optim']['lr']} (cosine to 1 %, 1 warm-up epoch), weight decay "
        f"{c['optim']['weight_decay']}, batch {t['batch_size']}, precision {t['precision']}, gradient clip 5, "
        f"seed {t['seed']}, max {t['max_epochs']} epochs.",
        f"* Wall time: {t['train_wall_min']:.1f} min training (all sessions); data preparation "
        f"{t['setup_s'] / 60:.1f} min in the last session (alignment {d['align_s'] / 60:.1f} min, then graphs); "
        f"hardware: {t['hardware']}; "
        f"torch {t['torch']}, tlgnn {c['tlgnn_version']}; finished {c['written']}.",
        f"* Command: `{c['command']}`",
        "",
    ]
    return lines + _curve_section(c.get("curve") or [], list(c["metrics"]["test"]))


#: rows of a learning-curve table in a model card (epochs spread evenly, the last always shown)
CURVE_ROWS = 12


def _curve_section(curve: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """The learning curve (validation MAE per task and the losses, by epoch) of a checkpoint's run, if recorded."""
    if not curve:
        return []
    step = max(1, math.ceil(len(curve) / CURVE_ROWS))
    rows = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
    lines = ["Learning curve (validation split; losses on normalised targets):", "",
             "| epoch | train loss | val loss | " + " | ".join(f"val MAE {t}" for t in tasks) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in tasks) + " |"]
    for r in rows:
        lines.append(f"| {r['epoch'] + 1} | {_fmt(r['train_loss'], 4)} | {_fmt(r['val_loss'], 4)} | "
                     + " | ".join(_fmt(r["val_mae"].get(t)) for t in tasks) + " |")
    return lines + [""]


#: what the shipped checkpoint does outside the physical range (measured with tlgnn.load_model, 2026-12-06)
OUTPUT_RANGE_NOTE = (
    '**Outputs are not clamped to the physical range.** The heads of these checkpoints were written before the',
    'head option `nonnegative` existed and predict as they always did: on the 150 Materials Project crystals of',
    '`data/mp_structures_sample.jsonl.gz`, `cgcnn_mp_pbe_eform.ckpt` predicts a negative `gap_pbe_mp` for 44 (all',
    'metals in MP, PBE gap 0 eV; the lowest −0.18 eV; some of the 150 may be pretraining crystals). Clip such',
    "values at 0 when you use them (`max(0, gap)`: on these 150 the MAE against MP's PBE gaps falls from 0.219 to",
    '0.206 eV), or fine-tune with `model.head.nonnegative: [<gap task>]`, as the shipped configs do (docs/models.md).',
    '',
)


def _usage() -> list[str]:
    return [
        "## Use",
        "",
        "```python",
        "import tlgnn",
        "model = tlgnn.load_model('data/pretrained/cgcnn_mp_pbe_eform.ckpt')",
        "model.predict(['data/structures/cif/cgcnn_cod_sample/1000041.cif'])   # gap_pbe_mp (eV), e_form_mp (eV/atom)",
        "model.embed(structures)                                                 # [n, 128] encoder embeddings",
        "```",
        "",
        "Fine-tuning: `model.init_from: data/pretrained/<file>.ckpt` with the encoder section copied from above",
        "(`configs/finetune_hse.yaml`). Predictions are only as good as the table says, for crystals like MP's;",
        "PBE gaps underestimate true gaps.",
        "",
        *OUTPUT_RANGE_NOTE,
    ]


__all__ = ["CARD_KIND", "PublishBest", "render_card", "task_scores", "write_pretrained"]
