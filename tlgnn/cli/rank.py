"""``tlgnn rank``: which crystal to compute (or make) next: candidates ordered by an acquisition.

    tlgnn rank --checkpoint ensemble.ckpt --input candidates/ --task gap_hse --acquisition ucb --output next.csv
    tlgnn rank --checkpoint ensemble.ckpt --input candidates/ --task gap_hse --acquisition exceed --threshold 3
    tlgnn rank --checkpoint ensemble.ckpt --input candidates/ --task gap_hse --acquisition std --top 20

Predicts like ``tlgnn predict`` (same inputs, ``--known`` included), scores each structure by the acquisition
(higher = first) and writes the CSV in that order: ``rank`` (1 = first), ``id``, ``score``, then the prediction
columns. Acquisitions (``tlgnn.uncertainty.acquisition``): ``mean`` (highest predicted value), ``ucb`` (upper
confidence bound: mean + kappa·std), ``exceed`` (probability that the value exceeds ``--threshold``), ``std``
(largest uncertainty: where a label teaches the model most), ``random``. ``--minimize`` looks for the lowest
values instead. Every acquisition but ``mean`` and ``random`` needs the calibrated std of an ensemble checkpoint
(``model.ensemble.members`` > 1).
"""

from __future__ import annotations

import argparse
import sys

#: tlgnn.uncertainty.ACQUISITIONS, written out: importing that package (scipy) here would slow ``tlgnn --help``
#: by ~0.7 s; tests/training/test_ensemble_run.py checks that the two lists agree.
CHOICES = ("mean", "ucb", "exceed", "std", "random")
NEEDS_STD = ("ucb", "exceed", "std")


def register(subparsers) -> None:
    """Add the ``rank`` subcommand."""
    from tlgnn.cli.predict import add_prediction_arguments

    p = subparsers.add_parser("rank", help="order candidate structures by an acquisition (which to compute next)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prediction_arguments(p)
    p.add_argument("--task", default=None, help="the regression task to rank by (default: the model's only "
                                                "regression output)")
    p.add_argument("--acquisition", default="ucb", choices=CHOICES,
                   help="how candidates are scored (default ucb)")
    p.add_argument("--kappa", type=float, default=2.0, help="ucb: mean + kappa * std (default 2)")
    p.add_argument("--threshold", type=float, default=None, help="exceed: the value to exceed (task unit)")
    p.add_argument("--minimize", action="store_true", help="look for the lowest values instead of the highest")
    p.add_argument("--top", type=int, default=None, help="write only the first N candidates")
    p.add_argument("--seed", type=int, default=0, help="random: the seed (default 0)")


def _task(args: argparse.Namespace, predictor) -> str | int:
    """The task to rank by, or an exit status after one line naming the choices."""
    regression = [t.name for t in predictor.tasks if t.name in predictor.outputs and t.kind == "regression"]
    if args.task is None:
        if len(regression) == 1:
            return regression[0]
        print(f"tlgnn rank: --task is needed; regression outputs: {', '.join(regression) or '(none)'}",
              file=sys.stderr)
        return 2
    if args.task not in regression:
        print(f"tlgnn rank: --task {args.task!r} is not a regression output of this model; regression outputs: "
              f"{', '.join(regression) or '(none)'}", file=sys.stderr)
        return 2
    return args.task


def _checked(args: argparse.Namespace, predictor) -> str | int:
    """The task, after the options that cannot work together are refused (exit status 2)."""
    if args.acquisition == "exceed" and args.threshold is None:
        print("tlgnn rank: --acquisition exceed needs --threshold (the value to exceed, task unit)", file=sys.stderr)
        return 2
    if args.top is not None and args.top < 1:
        print("tlgnn rank: --top must be >= 1", file=sys.stderr)
        return 2
    if args.acquisition in NEEDS_STD and not predictor.is_ensemble:
        print(f"tlgnn rank: --acquisition {args.acquisition} needs an uncertainty, and {args.checkpoint} is a "
              "single model: train an ensemble (model.ensemble.members: 5) or use --acquisition mean",
              file=sys.stderr)
        return 2
    return _task(args, predictor)


def run(args: argparse.Namespace) -> int:
    """Rank; 0 on success, 1 if nothing could be predicted or on a bad checkpoint, 2 on options that clash."""
    import numpy as np

    from tlgnn.cli.predict import load_predictor, predicted_frame
    from tlgnn.uncertainty import acquisition_scores, rank

    predictor = load_predictor(args, "rank")
    if isinstance(predictor, int):
        return predictor
    task = _checked(args, predictor)
    if isinstance(task, int):
        return task
    frame = predicted_frame(args, predictor, "rank")
    if frame is None:
        return 1
    mean = frame[task].to_numpy(dtype=float)
    std = frame[f"{task}_std"].to_numpy(dtype=float) if f"{task}_std" in frame else np.zeros_like(mean)
    scores = acquisition_scores(mean, std, args.acquisition, kappa=args.kappa, threshold=args.threshold,
                                minimize=args.minimize, seed=args.seed)
    order = rank(scores)
    ranked = frame.iloc[order].reset_index(drop=True)
    ranked.insert(0, "score", scores[order])
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    if args.top is not None:
        ranked = ranked.head(args.top)
    ranked.insert(1, "id", ranked.pop("id"))
    ranked.to_csv(args.output, index=False)
    direction = "lowest" if args.minimize else "highest"
    print(f"wrote {len(ranked)} of {len(frame)} candidates ranked by {args.acquisition} of {task} ({direction} "
          f"first) to {args.output}")
    return 0
