"""A simulated sequential-learning campaign: how fast does each acquisition find the widest-gap crystals?

The pool is a set of crystals with known labels (e.g. the HSE gaps of one fold's training part, eV) that stay
hidden until a crystal is "computed" (acquired). A campaign starts from ``initial`` randomly labelled crystals
and, for ``rounds`` rounds, fits a model on the labelled crystals and acquires the ``batch`` unlabelled ones the
acquisition ranks first (:mod:`tlgnn.uncertainty.acquisition`: ``mean``, ``ucb`` = mean + kappa·std, ``exceed``
= P(y > threshold), ``std``, and ``random``, the baseline that fits no model). After each round it counts how
many of the pool's top crystals (the ``ceil(top_fraction · n)`` largest true labels) are labelled.

The model of each round is the tlgnn ensemble of tree heads fitted on arrays (no Lightning):
:class:`tlgnn.models.ensemble.EnsembleHead` of ``members`` LightGBM :class:`tlgnn.models.heads.tree.TreeHead`
members (seeds 0..k-1) on bootstrap rows (:func:`tlgnn.models.ensemble.bootstrap_mask` of the rows' pool
positions), early-stopped on a held-out tenth of the labelled set (at least 5 rows); an error model of the
out-of-bag |error| (:meth:`EnsembleHead.fit_error_model`, features: the inputs then the mean as the last column,
as :func:`tlgnn.training.calibrate.fit_error_models` builds them); and the recalibration of the std (scale,
floor, error-model scale, and the interval's conformal quantile) fitted on the held-out rows and the error
model's own held-out rows: the functions a run calibrates with (:func:`tlgnn.training.calibrate.
fit_task_error_model`, :func:`~tlgnn.training.calibrate.calibrate_task`). The acquisition reads the calibrated
mean and std.

No hidden label is ever read by the choice: :func:`select_batch` receives only the labelled rows and their
labels; the ``exceed`` threshold is the ``1 - top_fraction`` quantile of the labels seen so far.

The "twice as fast" figure (:func:`speedup`): with the mean over seeds of the found-after-each-round curves,
the target count R is random's count at the final round; ``rounds_random`` (``rounds_a``) is the first round at
which random's (acquisition a's) mean curve reaches R; the speed-up is ``rounds_random / rounds_a`` (the ratio of
acquired crystals needed for the same number of top crystals found, the initial set counted in both). The ratio
of the counts at the final round (``final_ratio``) is reported beside it. "At least twice as fast": speed-up >= 2.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tlgnn.data.tasks import TaskSpec
from tlgnn.models.boosting import BoosterOptions
from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.ensemble import EnsembleHead, ensemble_spec, out_of_bag_mean
from tlgnn.models.heads.tree import TreeHead
from tlgnn.training.calibrate import calibrate_task, fit_task_error_model, held_out_calibration_rows
from tlgnn.uncertainty import ACQUISITIONS, acquisition_scores, rank

#: Encoders of the campaign features: the shipped CGCNN checkpoint, or a registered encoder by name.
CAMPAIGN_ENCODERS: dict[str, dict[str, Any]] = {
    "cgcnn": {"checkpoint": "data/pretrained/cgcnn_mp_pbe_eform.ckpt"},
    "chgnet": {"name": "chgnet", "options": {"pooling": "blocks"}},
}


def default_booster() -> BoosterOptions:
    """The members' LightGBM options: the defaults but 500 rounds, 5 rows per leaf and one thread."""
    return BoosterOptions(n_estimators=500, min_child_samples=5, n_jobs=1)


@dataclass(frozen=True)
class CampaignConfig:
    """Settings of a simulated campaign.

    Attributes:
        initial: randomly labelled crystals at round 0 (the same set for every acquisition of a seed).
        batch: crystals acquired per round.
        rounds: acquisition rounds.
        top_fraction: share of the pool that counts as "top" (largest true labels).
        acquisitions: the acquisitions compared (:data:`tlgnn.uncertainty.ACQUISITIONS`; ``random`` fits no model).
        kappa: the UCB's std multiplier.
        members: ensemble members (tree heads).
        seeds: campaign seeds (initial set, validation split, random choice).
        booster: LightGBM options of each member (its seed is ``booster.seed + i`` for member i).
        val_fraction: held-out share of the labelled set (early stopping, calibration), at least ``min_val`` rows.
        min_val: fewest held-out rows.
        level: nominal coverage of the ensemble's interval (calibration).
        task: the target's name (eV).
    """

    initial: int = 50
    batch: int = 10
    rounds: int = 20
    top_fraction: float = 0.05
    acquisitions: tuple[str, ...] = ("random", "mean", "ucb", "exceed", "std")
    kappa: float = 2.0
    members: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    booster: BoosterOptions = field(default_factory=default_booster)
    val_fraction: float = 0.1
    min_val: int = 5
    level: float = 0.9
    task: str = "gap_hse"

    def __post_init__(self) -> None:
        unknown = [a for a in self.acquisitions if a not in ACQUISITIONS]
        if unknown:
            raise ValueError(f"unknown acquisition(s) {unknown}; choose from {', '.join(ACQUISITIONS)}")
        if self.members < 2:
            raise ValueError(f"a campaign ensemble needs at least 2 members, got {self.members}")
        if self.initial < self.min_val + 2 or self.batch < 1 or self.rounds < 1:
            raise ValueError(f"need initial >= min_val + 2 ({self.min_val + 2}), batch >= 1 and rounds >= 1; got "
                             f"initial {self.initial}, batch {self.batch}, rounds {self.rounds}")
        if not 0.0 < self.top_fraction < 1.0 or not 0.0 < self.val_fraction < 1.0:
            raise ValueError("top_fraction and val_fraction must lie in (0, 1)")

    def labelled_after(self, r: int) -> int:
        """Crystals labelled after round ``r`` (round 0: the initial set)."""
        return self.initial + self.batch * r

    def as_dict(self) -> dict[str, Any]:
        """JSON-able settings (booster options by name)."""
        data = asdict(self)
        data["acquisitions"], data["seeds"] = list(self.acquisitions), list(self.seeds)
        return data


# ---------------------------------------------------------------------------------------------------- the pool
def top_mask(y: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each pool row is among the ``ceil(fraction · n)`` largest labels (ties: the earlier row)."""
    y = np.asarray(y, dtype=np.float64)
    n_top = max(1, math.ceil(fraction * len(y) - 1e-9))
    order = np.argsort(-y, kind="stable")
    mask = np.zeros(len(y), dtype=bool)
    mask[order[:n_top]] = True
    return mask


def initial_rows(n: int, initial: int, seed: int) -> np.ndarray:
    """The ``initial`` pool positions labelled at round 0 (seeded, shared by every acquisition of ``seed``)."""
    if initial > n:
        raise ValueError(f"the pool has {n} crystals, fewer than the {initial} initial labels")
    return np.sort(np.random.default_rng([seed, 7919]).choice(n, initial, replace=False))


def split_validation(rows: np.ndarray, config: CampaignConfig, seed: int,
                     r: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) positions within ``rows`` (indices into ``rows``): a seeded ``val_fraction`` of the
    labelled set, at least ``min_val`` rows."""
    n_val = max(config.min_val, int(round(config.val_fraction * len(rows))))
    order = np.random.default_rng([seed, r, 104723]).permutation(len(rows))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def exceed_threshold(y_labelled: np.ndarray, config: CampaignConfig) -> float:
    """The ``exceed`` threshold (eV): the ``1 - top_fraction`` quantile of the labels seen so far (never the
    hidden ones)."""
    return float(np.quantile(np.asarray(y_labelled, dtype=np.float64), 1.0 - config.top_fraction))


# ---------------------------------------------------------------------------------------------------- the model
def build_head(in_dim: int, config: CampaignConfig) -> EnsembleHead:
    """An unfitted bootstrap ensemble of ``config.members`` tree heads on one shared input."""
    tasks = [TaskSpec(name=config.task, kind="regression", unit="eV")]
    options = {k: v for k, v in config.booster.as_dict().items() if k != "seed"}
    members = [TreeHead(in_dim, tasks, task=config.task, seed=config.booster.seed + i, **options)
               for i in range(config.members)]
    spec = ensemble_spec({"members": config.members, "bootstrap": True, "level": config.level})
    return EnsembleHead(members, shared_input=True, spec=spec)


def _encoded(x: np.ndarray) -> EncoderOutput:
    """The rows ``x`` [n, f] as the encoder output the members read."""
    return EncoderOutput(node_emb=None, graph_emb=torch.as_tensor(np.asarray(x, dtype=np.float64)))


@torch.no_grad()
def fit_error_model_arrays(head: EnsembleHead, x: np.ndarray, y: np.ndarray, idx: np.ndarray, x_val: np.ndarray,
                           y_val: np.ndarray, name: str) -> dict[str, Any] | None:
    """Output ``name``'s error model from the training rows' out-of-bag means (:func:`tlgnn.training.calibrate.
    fit_task_error_model`, as a run fits it); ``None`` with too few out-of-bag rows. Where it stopped on its own
    held-out rows, ``calibration_rows`` holds them (:func:`tlgnn.training.calibrate.held_out_calibration_rows`)."""
    members = head.member_predictions(_encoded(x))[name]
    oob = out_of_bag_mean(members, torch.as_tensor(idx)).numpy()
    mean_val = head.member_predictions(_encoded(x_val))[name].double().mean(0).numpy()
    fitted = fit_task_error_model(head, name, x, y, oob, x_val, y_val, mean_val)
    if fitted is not None and "held_out" in fitted:
        fitted["calibration_rows"] = held_out_calibration_rows(
            head, name, fitted["held_out"], x, y, {name: oob}, members.double().std(0, unbiased=False).numpy())
    return fitted


@torch.no_grad()
def calibrate_arrays(head: EnsembleHead, x_val: np.ndarray, y_val: np.ndarray, name: str,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fit and store the recalibration of output ``name`` on the held-out rows and the error model's own
    ``extra`` ones (:func:`tlgnn.training.calibrate.calibrate_task`, as a run does). Returns the stored values."""
    got = head.uncertainty(_encoded(x_val))[name]
    error = got.get("std_error")
    return calibrate_task(head, name, y_val, got["mean"].double().numpy(), got["std_raw"].double().numpy(),
                          None if error is None else error.double().numpy(), extra)


def fit_round_model(x: np.ndarray, y: np.ndarray, idx: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                    config: CampaignConfig) -> tuple[EnsembleHead, dict[str, Any]]:
    """The round's calibrated ensemble fitted on training rows ``x`` [n, f] / ``y`` [n] (eV) with stable ids
    ``idx`` [n] (pool positions) and held-out rows ``x_val`` / ``y_val``. Returns it and the fit's facts
    (``val_mae`` of the mean, eV; ``error_model``: fitted or not; ``calibration``)."""
    head = build_head(x.shape[1], config)
    ones, ones_val = np.ones((len(y), 1), bool), np.ones((len(y_val), 1), bool)
    head.fit_arrays(x, y[:, None], ones, x_val, y_val[:, None], ones_val, idx=idx)
    error = fit_error_model_arrays(head, x, y, idx, x_val, y_val, config.task)
    calibration = calibrate_arrays(head, x_val, y_val, config.task, (error or {}).get("calibration_rows"))
    with torch.no_grad():
        mean_val = head(_encoded(x_val))[config.task].double().numpy()
    return head, {"val_mae": float(np.abs(mean_val - y_val).mean()), "error_model": error is not None,
                  "calibration": calibration}


@torch.no_grad()
def predict(head: EnsembleHead, x: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated mean and std [n] (eV) of rows ``x``."""
    got = head.uncertainty(_encoded(x))[name]
    return got["mean"].double().numpy(), got["std"].double().numpy()


# ---------------------------------------------------------------------------------------------------- one round
def select_batch(x: np.ndarray, labelled: np.ndarray, y_labelled: np.ndarray, acquisition: str,
                 config: CampaignConfig, seed: int, r: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``batch`` pool positions to label next, best first, and the round's facts.

    Reads only ``x`` [n, f] (every crystal's features), the labelled positions ``labelled`` and their labels
    ``y_labelled`` (eV): no hidden label can enter the choice. ``random`` fits no model."""
    candidates = np.setdiff1d(np.arange(len(x)), labelled)
    if acquisition == "random":
        scores = acquisition_scores(np.zeros(len(candidates)), np.zeros(len(candidates)), "random",
                                    seed=seed * 100003 + r)
        return candidates[rank(scores)[: config.batch]], {}
    start = time.perf_counter()
    train, val = split_validation(labelled, config, seed, r)
    head, facts = fit_round_model(x[labelled[train]], y_labelled[train], labelled[train], x[labelled[val]],
                                  y_labelled[val], config)
    mean, std = predict(head, x[candidates], config.task)
    threshold = exceed_threshold(y_labelled, config) if acquisition == "exceed" else None
    scores = acquisition_scores(mean, std, acquisition, kappa=config.kappa, threshold=threshold)
    facts.update(threshold=threshold, seconds=round(time.perf_counter() - start, 3))
    return candidates[rank(scores)[: config.batch]], facts


def run_acquisition(x: np.ndarray, y: np.ndarray, start: np.ndarray, acquisition: str, config: CampaignConfig,
                    seed: int) -> dict[str, Any]:
    """One acquisition's campaign from the labelled positions ``start``: ``found`` [rounds + 1] (top crystals
    labelled after each round, round 0 = ``start``), ``acquired`` (pool positions in the order they were
    labelled, ``start`` first), and per round ``val_mae`` (eV, None for random) and ``seconds``."""
    top = top_mask(y, config.top_fraction)
    labelled = np.asarray(start, dtype=np.int64)
    found, val_mae, seconds = [int(top[labelled].sum())], [], []
    for r in range(1, config.rounds + 1):
        chosen, facts = select_batch(x, labelled, y[labelled], acquisition, config, seed, r)
        labelled = np.concatenate([labelled, chosen])
        found.append(int(top[labelled].sum()))
        val_mae.append(facts.get("val_mae"))
        seconds.append(facts.get("seconds"))
    return {"found": found, "acquired": labelled.tolist(), "val_mae": val_mae, "seconds": seconds}


def run_campaign(x: np.ndarray, y: np.ndarray, config: CampaignConfig, seed: int) -> dict[str, Any]:
    """Every acquisition's campaign on pool ``x`` [n, f] / ``y`` [n] (eV; the labels stay hidden until acquired)
    from one shared random initial set.

    Returns ``{"seed", "n_pool", "n_top", "top_threshold"`` (the smallest top label, eV), ``"initial"`` (pool
    positions), ``"acquisitions": {name: run_acquisition(...)}}``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (len(x),) or not np.isfinite(y).all():
        raise ValueError(f"need x [n, f] and finite labels y [n]; got {x.shape} and {y.shape}")
    if config.labelled_after(config.rounds) > len(y):
        raise ValueError(f"the campaign labels {config.labelled_after(config.rounds)} crystals; the pool has "
                         f"{len(y)}")
    top = top_mask(y, config.top_fraction)
    start = initial_rows(len(y), config.initial, seed)
    runs = {a: run_acquisition(x, y, start, a, config, seed) for a in config.acquisitions}
    return {"seed": int(seed), "n_pool": int(len(y)), "n_top": int(top.sum()), "top_threshold": float(y[top].min()),
            "initial": start.tolist(), "acquisitions": runs}


# ---------------------------------------------------------------------------------------------------- summary
def first_reaching(curve: Sequence[float], target: float) -> int | None:
    """The first round at which ``curve`` reaches ``target`` (None: never)."""
    hits = np.flatnonzero(np.asarray(curve, dtype=np.float64) >= target - 1e-9)
    return int(hits[0]) if len(hits) else None


def speedup(curve: Sequence[float], random_curve: Sequence[float], batch: int) -> dict[str, Any]:
    """How much faster ``curve`` finds top crystals than ``random_curve`` (found after each round).

    ``target`` = random's count at the final round; ``rounds_random`` / ``rounds`` = the first round each curve
    reaches it (``acquired_*`` = rounds × batch); ``speedup`` = rounds_random / rounds (None when the curve never
    reaches the target or reaches it with the initial set alone); ``final_ratio`` = curve[-1] / random[-1]."""
    target = float(random_curve[-1])
    rounds_random, rounds = first_reaching(random_curve, target), first_reaching(curve, target)
    ratio = None if rounds is None or rounds == 0 else rounds_random / rounds
    final = float(curve[-1]) / target if target > 0 else None
    return {"target": target, "rounds_random": rounds_random, "rounds": rounds,
            "acquired_random": rounds_random * batch, "acquired": None if rounds is None else rounds * batch,
            "speedup": ratio, "final_ratio": final}


def summarize(runs: Sequence[Mapping[str, Any]], config: CampaignConfig) -> dict[str, Any]:
    """Over the seeds' :func:`run_campaign` results: ``labelled`` (count after each round), per acquisition the
    ``mean``/``min``/``max`` found curves, ``ideal`` (mean over seeds of min(n_top, initial found + batch·r):
    every acquisition a hit), and ``speedup`` of each acquisition vs random (on the mean curves, and per seed)."""
    rounds = range(config.rounds + 1)
    summary: dict[str, Any] = {"labelled": [config.labelled_after(r) for r in rounds], "curves": {},
                               "n_top": [run["n_top"] for run in runs]}
    for name in config.acquisitions:
        found = np.asarray([run["acquisitions"][name]["found"] for run in runs], dtype=np.float64)
        summary["curves"][name] = {"mean": found.mean(0).tolist(), "min": found.min(0).tolist(),
                                   "max": found.max(0).tolist(), "final": found[:, -1].tolist()}
    ideal = [[min(run["n_top"], next(iter(run["acquisitions"].values()))["found"][0] + config.batch * r)
              for r in rounds] for run in runs]
    summary["ideal"] = np.asarray(ideal, dtype=np.float64).mean(0).tolist()
    if "random" in config.acquisitions:
        random_mean = summary["curves"]["random"]["mean"]
        summary["speedup"] = {
            name: {**speedup(summary["curves"][name]["mean"], random_mean, config.batch),
                   "per_seed": [speedup(run["acquisitions"][name]["found"], run["acquisitions"]["random"]["found"],
                                        config.batch)["speedup"] for run in runs]}
            for name in config.acquisitions if name != "random"}
    return summary


def campaign_figure(summary: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Found top crystals vs crystals labelled: one line per acquisition (mean over seeds, band min–max), the
    ideal (every acquisition a hit) dotted. Writes a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = summary["labelled"]
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for name, curve in summary["curves"].items():
        line, = ax.plot(labelled, curve["mean"], marker="o", markersize=2.5, label=name,
                        linestyle="--" if name == "random" else "-")
        ax.fill_between(labelled, curve["min"], curve["max"], color=line.get_color(), alpha=0.15)
    ax.plot(labelled, summary["ideal"], linestyle=":", color="black", label="ideal (every pick a top crystal)")
    ax.set_ylim(0, max(max(summary["n_top"]), max(max(c["max"]) for c in summary["curves"].values())) * 1.05)
    ax.set_xlabel("crystals labelled")
    ax.set_ylabel("top crystals found")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def with_overrides(config: CampaignConfig, **changes: Any) -> CampaignConfig:
    """``config`` with the non-None ``changes`` applied (tuples for sequences)."""
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items() if v is not None}
    return replace(config, **changes)


# ---------------------------------------------------------------------------------------------------- real pools
@dataclass
class CampaignPool:
    """The crystals of a campaign: ``ids`` [n], features ``x`` [n, f] (the frozen encoder's graph embedding, then
    the composition features) and the hidden labels ``y`` [n] (eV), with how the features were made."""

    ids: list[str]
    x: np.ndarray
    y: np.ndarray
    describe: dict[str, Any]


def fold_pool_rows(experiment: Any, data: Any, fold: int) -> np.ndarray:
    """Table rows of the pool: the target-labelled rows of ``fold``'s training part (the benchmark's
    :func:`tlgnn.benchmark.runner.cell_rows` with every label, ``size="all"``)."""
    from tlgnn.benchmark.runner import cell_rows

    if not 0 <= fold < experiment.folds.n_folds:
        raise ValueError(f"fold must be in 0..{experiment.folds.n_folds - 1}, got {fold}")
    return cell_rows(experiment, data, fold, "all", 0)[1]


def frozen_encoder(name: str, repo_root: str | Path) -> Any:
    """The :class:`tlgnn.embeddings.structures.FrozenEncoder` of :data:`CAMPAIGN_ENCODERS` ``name``."""
    from tlgnn.embeddings.structures import encoder_by_name, encoder_from_checkpoint

    if name not in CAMPAIGN_ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {', '.join(CAMPAIGN_ENCODERS)}")
    spec = CAMPAIGN_ENCODERS[name]
    if "checkpoint" in spec:
        return encoder_from_checkpoint(Path(repo_root) / spec["checkpoint"])
    return encoder_by_name(spec["name"], spec["options"])


def stored_embeddings(frozen: Any, keys: Sequence[str], cache_root: str | Path) -> np.ndarray:
    """The cached graph embeddings [n, d] of the structures with content ``keys``; nothing is computed: a key
    missing from the cache is a ``LookupError`` (embed them first, e.g. with the transfer benchmark)."""
    from tlgnn.embeddings import EmbeddingCache, encoder_identity

    identity = encoder_identity(frozen.encoder, frozen.spec, frozen.graph)
    cache = EmbeddingCache(cache_root, identity)
    embeddings, _, found = cache.lookup(list(keys))
    if embeddings is None or not found.all():
        missing = len(keys) if embeddings is None else int((~found).sum())
        raise LookupError(f"{missing} of {len(keys)} structures have no cached {frozen.spec['name']} embedding in "
                          f"{cache.folder}; the campaign does not compute embeddings")
    return embeddings.astype(np.float64)


def load_pool(experiment_yaml: str | Path, fold: int, encoder: str, cache_dir: str | Path,
              data_path: str | Path | None = None, repo_root: str | Path = ".") -> CampaignPool:
    """The campaign pool of an experiment's fold: its training part's target-labelled crystals, features =
    ``encoder``'s cached graph embedding + composition features (:func:`tlgnn.baselines.composition.featurize`
    of the formula), structures from the benchmark's structure cache under ``cache_dir``, embeddings from
    ``cache_dir/embeddings``."""
    from tlgnn.baselines.composition import featurize
    from tlgnn.benchmark.config import load_experiment
    from tlgnn.benchmark.gnn_structures import load_structures
    from tlgnn.benchmark.runner import prepare

    experiment = load_experiment(experiment_yaml)
    data = prepare(experiment, data_path, repo_root)
    rows = fold_pool_rows(experiment, data, fold)
    frame = data.frame.iloc[rows]
    ids = frame["id"].astype(str).tolist()
    structures = load_structures(data.table.path, ids, cache_dir, n_jobs=1)
    frozen = frozen_encoder(encoder, repo_root)
    embedded = stored_embeddings(frozen, structures["structure_key"].astype(str).tolist(),
                                 Path(cache_dir) / "embeddings")
    composition = featurize(frame["formula"].tolist())
    describe = {"experiment": experiment.name, "target": experiment.target, "fold": int(fold),
                "encoder": dict(frozen.spec), "embedding_dim": int(embedded.shape[1]),
                "composition_dim": int(composition.shape[1]), "data": data.table.files}
    return CampaignPool(ids, np.hstack([embedded, composition]),
                        frame[experiment.target].to_numpy(dtype=np.float64), describe)


__all__ = ["CAMPAIGN_ENCODERS", "CampaignConfig", "CampaignPool", "build_head",
           "calibrate_arrays", "campaign_figure", "default_booster", "exceed_threshold", "first_reaching",
           "fit_error_model_arrays", "fit_round_model", "fold_pool_rows", "frozen_encoder", "initial_rows",
           "load_pool", "predict", "run_acquisition", "run_campaign", "select_batch", "speedup", "split_validation",
           "stored_embeddings", "summarize", "top_mask", "with_overrides"]
