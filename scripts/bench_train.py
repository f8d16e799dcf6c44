"""Training throughput of tlgnn encoders against a plain PyG ``CGConv`` CGCNN, on the same real batches.

For every encoder and batch size: forward + backward + AdamW step per batch, reported as graphs/s, peak
memory (process RSS on CPU; ``torch.cuda.max_memory_allocated`` on GPU) and the fraction of the timed wall
time spent waiting for the next batch (DataLoader + host-to-device copy). The reference is CGCNN written
directly with ``torch_geometric.nn.CGConv`` (as in PyG's documentation): same widths (92 -> 64 atom features,
41 Gaussians, 3 convolutions, 128 hidden, 1 output), same batches (one seeded shuffle), same loss and optimiser.

Graphs are built once before timing (all cores, progress bar; structures/s reported) from real Materials
Project structures, or read from a file written earlier with ``--save-graphs`` (that machine then needs
torch, PyG and tlgnn only). The last line is ``ratio_vs_reference: <x>``: tlgnn CGCNN graphs/s over the
reference's, geometric mean over the batch sizes (>= 1 means tlgnn is at least as fast), from the preloaded
batches when ``--feed both|preloaded`` (model speed alone; on a GPU the DataLoader can be the limit for both).

Examples::

    .venv/bin/python scripts/bench_train.py                                  # 3,000 MP structures, CPU
    .venv/bin/python scripts/bench_train.py --save-graphs /tmp/mp3000.pt     # also keep the graphs
    python scripts/bench_train.py --graphs /tmp/mp3000.pt --device cuda --compile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_data  # noqa: E402


# ------------------------------------------------------------------------------------------- reference model
class ReferenceCGCNN(nn.Module):
    """CGCNN built from PyG's ``CGConv`` the way its documentation suggests (the speed reference).

    ``Linear(92 -> atom_fea_len)`` on CGCNN elemental features, ``n_conv`` x ``softplus(CGConv(atom_fea_len,
    dim=n_gaussians, aggr="add", batch_norm=True))``, mean pooling, ``softplus -> Linear(atom_fea_len ->
    h_fea_len) -> softplus -> Linear(h_fea_len -> 1)``. Distances are expanded on CGCNN's Gaussian grid.
    """

    def __init__(self, atom_fea_len: int = 64, n_conv: int = 3, h_fea_len: int = 128, cutoff: float = 8.0,
                 step: float = 0.2) -> None:
        super().__init__()
        from torch_geometric.nn import CGConv

        from tlgnn.graphs import ATOM_FEATURES

        self.register_buffer("atom_features", ATOM_FEATURES.clone().float(), persistent=False)
        n_gaussians = int(round(cutoff / step)) + 1
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_gaussians), persistent=False)
        self.step = step
        self.embedding = nn.Linear(self.atom_features.shape[1], atom_fea_len)
        self.convs = nn.ModuleList(
            CGConv(atom_fea_len, dim=n_gaussians, aggr="add", batch_norm=True) for _ in range(n_conv)
        )
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.fc_out = nn.Linear(h_fea_len, 1)

    def forward(self, batch: Any) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        x = self.embedding(self.atom_features[batch.z])
        edge_attr = torch.exp(-((batch.edge_dist.view(-1, 1) - self.centers) ** 2) / self.step**2)
        edge_index = batch.edge_index.flip(0)  # PyG aggregates at row 1; tlgnn's row 0 is the centre atom
        for conv in self.convs:
            x = F.softplus(conv(x, edge_index, edge_attr))
        crystal = global_mean_pool(x, batch.batch, size=batch.num_graphs)
        crystal = F.softplus(self.conv_to_fc(F.softplus(crystal)))
        return self.fc_out(crystal).view(-1)


def tlgnn_model(encoder: str, **options: Any) -> nn.Module:
    """tlgnn ``TransferModel``: ``encoder`` (default options unless given) and a single linear output (as the
    reference)."""
    from tlgnn.data.tasks import TaskSpec
    from tlgnn.models import build_model

    return build_model({"name": encoder, **options}, {"name": "single", "hidden": []},
                       [TaskSpec(name=bench_data.TARGET)])


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"cgcnn:edge_projection=per_atom,n_conv=4"`` -> ``("cgcnn", {"edge_projection": "per_atom", "n_conv": 4})``."""
    import yaml

    encoder, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: expected ENCODER:KEY=VALUE[,KEY=VALUE], got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return encoder.strip(), options


def tlgnn_predict(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(batch)[bench_data.TARGET]


def reference_predict(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(batch)


# ------------------------------------------------------------------------------------------------ harness
@dataclass
class Result:
    """One timed run: ``graphs_per_s`` over ``steps`` batches after warm-up; memory in MiB."""

    encoder: str
    model: str
    feed: str  # "loader": a DataLoader collates every batch; "preloaded": collated once, kept on the device
    batch_size: int
    steps: int
    graphs_per_s: float
    data_wait: float  # fraction of the timed wall time spent waiting for batches
    peak_mem_mib: float  # process RSS (CPU) or max allocated (GPU) during the timed steps
    warmup_s: float  # wall time of the warm-up steps (the slowest run's: includes torch.compile compilation)


def _batches(graphs: list, batch_size: int, seed: int, num_workers: int, pin: bool) -> Iterator[Any]:
    """Endless batches: the same seeded shuffle for every model (identical batch sequences)."""
    from torch_geometric.loader import DataLoader

    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(graphs, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator,
                        num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0)
    while True:
        yield from loader


class PackedGraphs:
    """The graphs as tlgnn's data module serves them: graph packs on disk (``GraphStore``, memory-mapped reads)
    fetched a whole batch at a time (``GraphStore.batch`` through ``tlgnn.data.loader.graph_loader``), with the
    same ``y``/``y_mask`` as the PyG items. ``repeat``: every graph served this many times per epoch."""

    def __init__(self, graphs: list, directory: Path, repeat: int = 1) -> None:
        import numpy as np

        from tlgnn.graphs.packs import GraphStore, write_pack

        path = write_pack(directory, [f"g{i}" for i in range(len(graphs))], bench_data.graph_arrays(graphs))
        self.store = GraphStore.open([path], mmap=True)
        self.y = torch.cat([g.y for g in graphs])  # [n, 1]
        self.repeat = repeat
        self._np = np

    def __len__(self) -> int:
        return len(self.store) * self.repeat

    def __getitem__(self, i: int) -> Any:
        item = self.store[i % len(self.store)]
        item.y, item.y_mask = self.y[i % len(self.store)].view(1, 1), torch.ones(1, 1, dtype=torch.bool)
        return item

    def batch(self, positions) -> Any:
        idx = self._np.asarray(positions, dtype=self._np.int64) % len(self.store)
        return self.store.batch(idx, y=self.y[idx], y_mask=torch.ones(len(idx), 1, dtype=torch.bool))


def _pack_batches(dataset: PackedGraphs, batch_size: int, seed: int, num_workers: int, pin: bool) -> Iterator[Any]:
    """Endless batches from tlgnn's pack loader (the same seeded shuffle as :func:`_batches`)."""
    from tlgnn.data.loader import graph_loader

    generator = torch.Generator().manual_seed(seed)
    loader = graph_loader(dataset, batch_size, shuffle=True, drop_last=True, generator=generator,
                          num_workers=num_workers, pin_memory=pin)
    while True:
        yield from loader


def _preloaded(graphs: list, batch_size: int, seed: int, count: int, device: torch.device,
               prepare: Callable) -> Iterator[Any]:
    """The first ``count`` batches of the same seeded shuffle, collated once, prepared on the host and moved to
    ``device``, cycled."""
    source = _batches(graphs, batch_size, seed, 0, pin=False)
    cached = [prepare(next(source)).to(device) for _ in range(count)]
    while True:
        yield from cached


def host_preparation(model: nn.Module) -> Callable:
    """What the training module does to a batch on the host before the transfer: tlgnn models run their
    encoder's ``prepare_batch`` (input checks, ``uniform_degree``); the reference gets the batch as it is."""
    encoder = getattr(getattr(model, "_orig_mod", model), "encoder", None)
    return encoder.prepare_batch if encoder is not None else (lambda batch: batch)


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def time_training(model: nn.Module, predict: Callable, graphs: list, batch_size: int, steps: int, warmup: int,
                  device: torch.device, seed: int, num_workers: int, label: tuple[str, str],
                  feed: str = "loader", packed_graphs: "PackedGraphs | None" = None) -> Result:
    """Train ``model`` (already on ``device``) for ``warmup + steps`` batches; time the last ``steps``."""
    cuda = device.type == "cuda"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prepare = host_preparation(model)
    if feed == "preloaded":
        batches = _preloaded(graphs, batch_size, seed, warmup + steps, device, prepare)
    elif feed == "packs":
        batches = _pack_batches(packed_graphs, batch_size, seed, num_workers, pin=cuda)
    else:
        batches = _batches(graphs, batch_size, seed, num_workers, pin=cuda)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    peak, wait, n_graphs, warmup_s = 0.0, 0.0, 0, 0.0
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            warmup_s = time.perf_counter() - start
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
        t0 = time.perf_counter()
        batch = next(batches)
        if feed != "preloaded":
            batch = prepare(batch).to(device, non_blocking=True)
        if step >= warmup:
            wait += time.perf_counter() - t0
            n_graphs += batch.num_graphs
        loss = F.mse_loss(predict(model, batch), batch.y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not cuda and step >= warmup:
            peak = max(peak, _rss_mib())
    sync()
    elapsed = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    final = float(loss.detach())
    if not math.isfinite(final):
        raise RuntimeError(f"{label}: loss is {final} after training (broken model or data)")
    return Result(label[0], label[1], feed, batch_size, steps, n_graphs / elapsed, wait / elapsed, peak, warmup_s)


# ------------------------------------------------------------------------------------------------- main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=bench_data.DEFAULT_DATA,
                   help="structures.jsonl.gz of mp_multifidelity_bandgap (default: %(default)s)")
    p.add_argument("--limit", type=int, default=3000, help="structures sampled from --data (default 3000)")
    p.add_argument("--graphs", type=Path, help="read pre-built graphs (a --save-graphs file) instead of --data")
    p.add_argument("--save-graphs", type=Path, help="write the built graphs here (torch.save, packed)")
    p.add_argument("--build-jobs", type=int, help="processes for graph building (default: all cores)")
    p.add_argument("--encoders", default="all", help="tlgnn encoders, comma-separated (default: all registered)")
    p.add_argument("--batch-sizes", default="32,64,128", help="comma-separated (default 32,64,128)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per run (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="runs per model and batch size; median reported")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--threads", type=int, default=bench_data.available_cores(),
                   help="torch CPU threads (default: all available cores)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(tlgnn CGCNN, dynamic=True)")
    p.add_argument("--variant", action="append", default=[], metavar="ENCODER:KEY=VALUE[,...]",
                   help="also time a tlgnn encoder with these options (repeatable), e.g. "
                        "'cgcnn:edge_projection=per_atom'")
    p.add_argument("--repeat-data", type=int, default=1,
                   help="serve the graphs this many times per epoch (longer epochs for large GPU batches)")
    p.add_argument("--feed", default="loader",
                   help="comma-separated feeds: loader (PyG DataLoader over Data items, end to end, data wait "
                        "measured), packs (tlgnn's data path: graph packs on disk, whole batches gathered per "
                        "step), preloaded (the same batches collated once and kept on the device: model speed "
                        "alone); both = loader,preloaded (default: loader)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write all results as JSON here")
    args = p.parse_args(argv)
    for name in ("limit", "steps", "repeats", "threads", "repeat_data"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.num_workers < 0:
        p.error("--warmup and --num-workers must be >= 0")
    try:
        args.sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--batch-sizes: give at least one size, each >= 1")
    args.feeds = ["loader", "preloaded"] if args.feed == "both" else \
        [f.strip() for f in args.feed.split(",") if f.strip()]
    unknown = sorted(set(args.feeds) - {"loader", "packs", "preloaded"})
    if unknown or not args.feeds:
        p.error(f"--feed: unknown feed(s) {unknown}; choose from loader, packs, preloaded, both")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        p.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    return args


def _graphs(args: argparse.Namespace) -> tuple[dict, str]:
    if args.graphs is not None:
        packed = bench_data.load_packed(args.graphs)
        return packed, f"graphs: {args.graphs} ({bench_data.describe(packed)})"
    t0 = time.perf_counter()
    ids, structures, targets = bench_data.load_mp_structures(args.data, args.limit, args.seed)
    parse_s = time.perf_counter() - t0
    graphs, stats = bench_data.build_graphs(structures, n_jobs=args.build_jobs, progress=True)
    from tlgnn.graphs import CrystalGraphBuilder

    packed = bench_data.pack(graphs, ids, targets, CrystalGraphBuilder().settings)
    line = (f"graphs: {args.data} ({bench_data.describe(packed)}); CIF parsing {parse_s:.1f} s; graph building "
            f"{stats.build_s:.1f} s on {stats.n_jobs} processes = {stats.structures_per_s:.0f} structures/s")
    if args.save_graphs is not None:
        size = bench_data.save_packed(args.save_graphs, packed)
        line += f"\nsaved graphs: {args.save_graphs} ({size / 2**20:.1f} MiB)"
    return packed, line


def main(argv: list[str] | None = None) -> float:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    import torch_geometric

    try:  # the models first: a typo in --encoders/--variant stops before the graphs are loaded
        variants, encoders = build_variants(args, device)
    except ValueError as err:
        raise SystemExit(f"bench_train.py: {err}") from None
    packed, data_line = _graphs(args)
    graphs = bench_data.unpack(packed) * args.repeat_data
    sizes = args.sizes
    if max(sizes) > len(graphs):
        raise SystemExit(f"bench_train.py: batch size {max(sizes)} exceeds the {len(graphs)} graphs (every batch is "
                         "full: lower --batch-sizes, or raise --limit / --repeat-data)")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({card}); torch {torch.__version__}, PyG {torch_geometric.__version__}; "
          f"{torch.get_num_threads()} CPU threads; DataLoader workers {args.num_workers}")
    print(data_line)
    if hasattr(os, "getloadavg"):
        print(f"load average before timing: {os.getloadavg()[0]:.1f} on {bench_data.available_cores()} cores "
              "(other processes share the CPU when this exceeds the core count)")
    print(f"timing: {args.warmup} warm-up + {args.steps} timed steps per run, median of {args.repeats} runs; "
          "forward + backward + AdamW step; memory = "
          + ("max GPU memory allocated" if device.type == "cuda" else "peak process RSS during the timed steps"))

    feeds = args.feeds
    with tempfile.TemporaryDirectory(prefix="tlgnn_bench_packs_") as pack_dir:
        packed_graphs = None
        if "packs" in feeds:
            packed_graphs = PackedGraphs(bench_data.unpack(packed), Path(pack_dir), repeat=args.repeat_data)
        results = _time_all(args, variants, graphs, feeds, device, packed_graphs)
    return _report(args, results, encoders, feeds, device, card, data_line)


def build_variants(args: argparse.Namespace, device: torch.device) -> tuple[list, list[str]]:
    """The models to time: the reference, each tlgnn encoder, each ``--variant``, the compiled CGCNN. Each is built
    once (seeded) and reset to its initial state before each run, so a compiled model compiles once."""
    from tlgnn.models import ENCODERS

    encoders = sorted(ENCODERS) if args.encoders == "all" else [e.strip() for e in args.encoders.split(",") if e.strip()]
    if "cgcnn" in encoders:
        encoders.insert(0, encoders.pop(encoders.index("cgcnn")))
    torch.manual_seed(args.seed)
    variants: list[tuple[str, str, nn.Module, Callable]] = [
        ("cgcnn", "reference", ReferenceCGCNN().to(device), reference_predict)]
    for enc in encoders:
        torch.manual_seed(args.seed)
        variants.append((enc, "tlgnn", tlgnn_model(enc).to(device), tlgnn_predict))
    for text in args.variant:
        enc, options = parse_variant(text)
        torch.manual_seed(args.seed)
        label = "tlgnn[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]"
        variants.append((enc, label, tlgnn_model(enc, **options).to(device), tlgnn_predict))
    if args.compile:
        torch.manual_seed(args.seed)
        eager = tlgnn_model("cgcnn").to(device)
        variants.append(("cgcnn", "tlgnn+compile", torch.compile(eager, dynamic=True), tlgnn_predict))
    return variants, encoders


def _time_all(args: argparse.Namespace, variants: list, graphs: list, feeds: list[str], device: torch.device,
              packed_graphs: Any) -> list[Result]:
    """Every model at every feed and batch size, interleaved per repeat; the median run of each is kept."""
    initial = {id(m): {k: v.clone() for k, v in m.state_dict().items()} for _, _, m, _ in variants}
    sizes = args.sizes
    results: list[Result] = []
    for feed in feeds:
        for bs in sizes:
            runs: dict[tuple[str, str], list[Result]] = {}
            for _ in range(args.repeats):
                for enc, kind, model, predict in variants:  # interleaved, so drift hits every model alike
                    model.load_state_dict(initial[id(model)])
                    r = time_training(model, predict, graphs, bs, args.steps, args.warmup, device, args.seed,
                                      args.num_workers, (enc, kind), feed, packed_graphs)
                    runs.setdefault((enc, kind), []).append(r)
            for (enc, kind), rs in runs.items():
                mid = sorted(rs, key=lambda r: r.graphs_per_s)[len(rs) // 2]  # median run
                med = Result(enc, kind, feed, bs, args.steps, statistics.median(r.graphs_per_s for r in rs),
                             mid.data_wait, max(r.peak_mem_mib for r in rs), max(r.warmup_s for r in rs))
                results.append(med)
                print(f"encoder={enc:<12} model={kind:<32} feed={feed:<9} batch={bs:<4} "
                      f"graphs/s={med.graphs_per_s:9.1f}  peak_mem_mib={med.peak_mem_mib:8.1f}  "
                      f"data_wait={100 * med.data_wait:5.1f}%  warmup_s={med.warmup_s:6.2f}", flush=True)
    return results


def _report(args: argparse.Namespace, results: list[Result], encoders: list[str], feeds: list[str],
            device: torch.device, card: str, data_line: str) -> float:
    """Per-batch ratios, peak RSS, the JSON file, and the final ``ratio_vs_reference`` line (geometric mean)."""
    sizes = args.sizes
    feed = "preloaded" if "preloaded" in feeds else feeds[-1]  # the ratio compares model speed when measured

    def rate(kind: str, bs: int) -> float:
        return next(r.graphs_per_s for r in results
                    if r.encoder == "cgcnn" and r.model == kind and r.batch_size == bs and r.feed == feed)

    ratios = [rate("tlgnn", bs) / rate("reference", bs) for bs in sizes] if "cgcnn" in encoders else []
    for bs, ratio in zip(sizes, ratios):
        line = f"cgcnn batch={bs} ({feed}): tlgnn/reference = {ratio:.2f}"
        if args.compile:
            line += f"; compiled/eager tlgnn = {rate('tlgnn+compile', bs) / rate('tlgnn', bs):.2f}"
        for text in args.variant:
            enc, options = parse_variant(text)
            if enc == "cgcnn":
                label = "tlgnn[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]"
                line += f"; {label}/reference = {rate(label, bs) / rate('reference', bs):.2f}"
        print(line)
    print(f"peak process RSS (whole run): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    ratio = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": str(device), "card": card, "threads": torch.get_num_threads(),
                                         "data": data_line, "results": [asdict(r) for r in results],
                                         "ratio_vs_reference": ratio}, indent=1))
    if args.compile and ratios:  # the trainer.compile option against the (eager) reference, for the record
        compiled = [rate("tlgnn+compile", bs) / rate("reference", bs) for bs in sizes]
        print(f"ratio_vs_reference with trainer.compile: {math.exp(sum(map(math.log, compiled)) / len(compiled)):.3f}")
    print(f"ratio_vs_reference: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as err:
        raise SystemExit(f"bench_train.py: {err}") from None
