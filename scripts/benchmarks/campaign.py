#!/usr/bin/env python
"""Simulated sequential-learning campaign (issue 17): how fast each acquisition finds the top-5 % widest gaps.

  scripts/benchmarks/campaign.py --experiment hse --fold 0 --encoder cgcnn|chgnet \\
      --output docs/results/campaign_hse.json --figure docs/figures/campaign_hse.png [--data PATH]
      [--cache-dir DIR] [--seeds 0 1 2] [--rounds 20] [--initial 50] [--batch 10]

The pool is the target-labelled crystals of the fold's training part (labels hidden until acquired); features
are the frozen encoder's cached graph embedding + composition features. Nothing is embedded here: the embeddings
must already be in ``<cache-dir>/embeddings`` (the transfer benchmark's frozen-embedding kinds put them there).
See :mod:`tlgnn.benchmark.campaign` for the protocol and how the speed-up is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="hse", help="configs/benchmarks/<name>.yaml")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--encoder", default="cgcnn", choices=["cgcnn", "chgnet"])
    p.add_argument("--output", default="docs/results/campaign_hse.json")
    p.add_argument("--figure", default="docs/figures/campaign_hse.png")
    p.add_argument("--data", default=None, help="the experiment's data (default: its config's data.path)")
    p.add_argument("--cache-dir", default=os.environ.get("TLGNN_CACHE_DIR", str(REPO / "runs" / "cache")),
                   help="cache root: benchmark_structures/ and embeddings/ (default: $TLGNN_CACHE_DIR, else "
                        "runs/cache)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--initial", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    return p.parse_args(argv)


def compact_json(value: object, indent: str = "") -> str:
    """JSON with one key per line and every list on one line (the per-round curves and acquired ids stay short)."""
    if isinstance(value, dict) and value:
        inner = indent + " "
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + compact_json(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def speedup_line(name: str, final: float, item: dict) -> str:
    """One acquisition's speed-up vs random, in words."""
    ratio = "n/a" if item["final_ratio"] is None else f"x{item['final_ratio']:.2f}"
    fast = "n/a" if item["speedup"] is None else f"x{item['speedup']:.2f}"
    return (f"{name}: {final:.1f} top crystals found at the final round vs random {item['target']:.1f} ({ratio}); "
            f"reaches random's final count at round {item['rounds']} vs {item['rounds_random']} (speed-up {fast})")


def main(argv: list[str] | None = None) -> int:
    """Load the pool, run every seed's campaign, write the JSON and the figure, print the speed-ups."""
    from tlgnn.benchmark.campaign import (CampaignConfig, campaign_figure, load_pool, run_campaign, summarize,
                                          with_overrides)

    args = parse_args(argv)
    config = with_overrides(CampaignConfig(), seeds=args.seeds, rounds=args.rounds, initial=args.initial,
                            batch=args.batch)
    start = time.perf_counter()
    pool = load_pool(REPO / "configs" / "benchmarks" / f"{args.experiment}.yaml", args.fold, args.encoder,
                     args.cache_dir, args.data, REPO)
    print(f"campaign: {len(pool.ids)} crystals, {pool.x.shape[1]} features ({args.encoder})", file=sys.stderr)
    runs = []
    for seed in config.seeds:
        run = run_campaign(pool.x, pool.y, config, seed)
        for item in run["acquisitions"].values():
            item["acquired"] = [pool.ids[i] for i in item["acquired"]]
        run["initial"] = [pool.ids[i] for i in run["initial"]]
        runs.append(run)
        print(f"seed {seed}: " + ", ".join(f"{a} {r['found'][-1]}" for a, r in run["acquisitions"].items())
              + f" of {run['n_top']} top crystals", file=sys.stderr)
    summary = summarize(runs, config)
    result = {"pool": pool.describe, "config": config.as_dict(), "summary": summary, "runs": runs,
              "seconds": round(time.perf_counter() - start, 1)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(compact_json(result) + "\n")
    seeds = f"{len(config.seeds)} seed{'s' * (len(config.seeds) > 1)}"
    title = (f"{args.experiment} fold {args.fold}, {args.encoder} + composition: top {config.top_fraction:.0%} "
             f"({summary['n_top'][0]} of {len(pool.ids)}), {seeds}")
    campaign_figure(summary, args.figure, title)
    for name, item in summary.get("speedup", {}).items():
        print(speedup_line(name, summary["curves"][name]["mean"][-1], item), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
