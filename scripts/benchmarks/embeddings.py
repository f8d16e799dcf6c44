#!/usr/bin/env python
"""Cost of the cached-embedding path (issue 16): one-off embedding cost per encoder, and a head epoch on stored
embeddings vs the same epoch end to end (the frozen encoder run on every batch), in the same run.

  scripts/benchmarks/embeddings.py cost  [--encoders cgcnn,chgnet,chgnet_blocks,m3gnet_lite] [--threads 1]
  scripts/benchmarks/embeddings.py epoch [--encoder cgcnn|chgnet] [--config configs/finetune_hse.yaml]
                                         [--task gap_pbe_mp] [--epochs 4] [--batch-size 32]

``cost`` embeds the 500 shipped Materials Project crystals (data/mp_sample/structures.jsonl.gz) and prints
seconds per 1,000 structures for building tlgnn graphs and for the encoder (batches of 64, eval mode, no cache).
``cgcnn`` is the shipped checkpoint's encoder (data/pretrained/cgcnn_mp_pbe_eform.ckpt); ``m3gnet_lite`` a
randomly initialised one of the same size as the benchmark's (cost only). ``epoch`` trains the same frozen-encoder
run twice with ``tlgnn.training.run.fit`` (``model.cache_embeddings`` true, then false; embeddings already cached)
and prints the median training-epoch time of each (validation excluded) and their ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHIPPED = REPO / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
ENCODERS = {
    "cgcnn": None,  # the shipped checkpoint's encoder
    "chgnet": {"name": "chgnet", "version": "0.3.0", "pooling": "mean"},
    "chgnet_blocks": {"name": "chgnet", "version": "0.3.0", "pooling": "blocks"},
    "m3gnet_lite": {"name": "m3gnet_lite"},
}


def _structures() -> list:
    from tlgnn.io import parse_structure_text

    with gzip.open(REPO / "data" / "mp_sample" / "structures.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle]
    return [parse_structure_text(r["cif"], fmt="cif", name=r["material_id"]) for r in rows]


def cost(args: argparse.Namespace) -> int:
    import torch
    from torch_geometric.loader import DataLoader

    from tlgnn.embeddings import embed_loader
    from tlgnn.embeddings.structures import encoder_by_name, encoder_from_checkpoint
    from tlgnn.graphs import CrystalGraphBuilder

    torch.set_num_threads(args.threads)
    structures = _structures()
    per_k = 1000.0 / len(structures)
    t0 = time.perf_counter()
    graphs = [g.to_data() for g in CrystalGraphBuilder().build_many(structures)]
    graph_s = (time.perf_counter() - t0) * per_k
    print(f"{len(structures)} structures (data/mp_sample), {args.threads} thread(s); tlgnn graphs: "
          f"{graph_s:.1f} s per 1,000")
    print("| encoder | width | encoder s / 1,000 | graphs + encoder s / 1,000 | structures / s |")
    print("|---|---|---|---|---|")
    for name in args.encoders.split(","):
        frozen = encoder_from_checkpoint(SHIPPED) if ENCODERS[name] is None else \
            encoder_by_name(ENCODERS[name]["name"], {k: v for k, v in ENCODERS[name].items() if k != "name"})
        loader = DataLoader(graphs, batch_size=64)
        embed_loader(frozen.encoder, DataLoader(graphs[:64], batch_size=64))  # warm-up
        t0 = time.perf_counter()
        emb, _ = embed_loader(frozen.encoder, loader)
        enc_s = (time.perf_counter() - t0) * per_k
        print(f"| {name} | {emb.shape[1]} | {enc_s:.1f} | {graph_s + enc_s:.1f} | {1000 / (graph_s + enc_s):.0f} |",
              flush=True)
    return 0


class EpochTimer:
    """Lightning callback: per training epoch, the summed time of its training steps (``batch``: fetch excluded,
    forward, backward, optimiser) and the wall time from its start to the start of the next epoch (``epoch``:
    also validation, logging and the epoch's checkpoints)."""

    def __new__(cls):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.steps: list[float] = []
                self.epochs: list[float] = []
                self._epoch = self._batch = 0.0
                self._sum = 0.0

            def on_train_epoch_start(self, trainer, pl_module) -> None:
                now = time.perf_counter()
                if self._epoch:
                    self.epochs.append(now - self._epoch)
                self._epoch, self._sum = now, 0.0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                self._batch = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self._sum += time.perf_counter() - self._batch

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                self.steps.append(self._sum)

        return _Timer()


def _epoch_config(args: argparse.Namespace, out: Path, cached: bool):
    from tlgnn.training.config import load_run_config

    overrides = [f"data.tasks=[{args.task}]", "model.finetune.freeze=encoder", f"trainer.max_epochs={args.epochs}",
                 "trainer.enable_progress_bar=false", "trainer.early_stopping.patience=null",
                 f"data.batch_size={args.batch_size}", f"model.cache_embeddings={str(cached).lower()}",
                 f"model.head.task={args.task}", f"model.head.nonnegative=[{args.task}]", f"output_dir={out}",
                 f"trainer.cpu_threads={args.threads}", "logger.kind=csv"]
    if args.encoder != "cgcnn":
        overrides.append("model.init_from=null")
    config = load_run_config(Path(args.config), overrides)
    if args.encoder != "cgcnn":  # another encoder, pretrained by its own package: replaces the config's
        config.model.encoder = dict(ENCODERS[args.encoder])
    return config


def epoch(args: argparse.Namespace) -> int:
    from tlgnn.training.run import fit

    steps, epochs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for cached in (True, False):
            timer = EpochTimer()
            fit(_epoch_config(args, Path(tmp) / str(cached), cached), callbacks=[timer], test=False)
            steps[cached] = statistics.median(timer.steps[1:] or timer.steps)
            epochs[cached] = statistics.median(timer.epochs or [float("nan")])
    print("| encoder | data | batch | training steps of an epoch: stored / end to end (s) | ratio "
          "| whole epoch incl. validation + checkpoints: stored / end to end (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.encoder} | {Path(args.config).name}, task {args.task} | {args.batch_size} | "
          f"{steps[True]:.3f} / {steps[False]:.3f} | {steps[False] / steps[True]:.0f}x | "
          f"{epochs[True]:.3f} / {epochs[False]:.3f} | {epochs[False] / epochs[True]:.0f}x |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--encoders", default="cgcnn,chgnet,chgnet_blocks,m3gnet_lite")
    c.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("epoch")
    e.add_argument("--encoder", default="cgcnn", choices=("cgcnn", "chgnet", "chgnet_blocks"))
    e.add_argument("--config", default=str(REPO / "configs" / "finetune_hse.yaml"))
    e.add_argument("--task", default="gap_pbe_mp")
    e.add_argument("--epochs", type=int, default=4)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return cost(args) if args.command == "cost" else epoch(args)


if __name__ == "__main__":
    sys.exit(main())
