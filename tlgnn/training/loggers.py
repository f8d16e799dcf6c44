"""Run loggers: a CSV log always, a Weights & Biases run with ``logger.kind: wandb``.

W&B never prompts: when neither ``logger.wandb.mode`` nor ``$WANDB_MODE`` is set, the run is ``online`` only if
``$WANDB_API_KEY`` is set and ``offline`` otherwise (sync later with ``wandb sync <output_dir>/wandb/...``).
The W&B files live in ``<output_dir>/wandb``; the run id is kept in ``<output_dir>/wandb_run_id`` so a resumed
run continues the same W&B run.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Mapping, Sequence

from lightning.pytorch.loggers import CSVLogger, Logger

from tlgnn.training.config import LoggerConfig, WandbConfig

RUN_ID_FILE = "wandb_run_id"


def wandb_mode(cfg: WandbConfig) -> str:
    """The W&B mode to use: the config's, else ``$WANDB_MODE``, else online iff ``$WANDB_API_KEY`` is set."""
    if cfg.mode:
        return cfg.mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def build_wandb_logger(cfg: WandbConfig, output_dir: str | Path, config: Mapping[str, Any] | None = None):
    """A Lightning ``WandbLogger`` writing under ``output_dir/wandb``, never prompting for a login."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    out = Path(output_dir)
    (out / "wandb").mkdir(parents=True, exist_ok=True)
    mode = wandb_mode(cfg)
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = out / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    settings = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False, x_disable_stats=True)
    return WandbLogger(
        name=cfg.name or out.name,
        save_dir=str(out),
        dir=str(out),
        id=run_id,
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags) or None,
        log_model=cfg.log_model,
        mode=mode,
        resume="allow",
        settings=settings,
        config=dict(config) if config else None,
    )


def build_loggers(cfg: LoggerConfig, output_dir: str | Path, config: Mapping[str, Any] | None = None) -> list[Logger]:
    """CSV logger (``<output_dir>/logs/version_N/metrics.csv``, a new version per attempt) plus W&B if asked."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(output_dir), name="logs")]
    if cfg.kind == "wandb":
        loggers.append(build_wandb_logger(cfg.wandb, output_dir, config))
    return loggers


def wandb_logger_of(loggers: Sequence[Logger]):
    """The ``WandbLogger`` among ``loggers``, or ``None``."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger
    return None


def close_loggers(loggers: Sequence[Logger], status: str = "success") -> None:
    """Flush every logger; a W&B run is finished and its files written before this returns.

    ``run.finish()`` returns before the W&B service has flushed the run file, so the service is torn down too
    (the next run starts a new one).
    """
    for logger in loggers:
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            import wandb

            logger.experiment.finish(exit_code=0 if status == "success" else 1)
            wandb.teardown()


def log_test_results_to_wandb(
    logger: Any,
    scores: Mapping[str, Mapping[str, float]],
    plots: Mapping[str, str | Path],
    alignment_report: str | None = None,
    files: Sequence[str | Path] = (),
) -> None:
    """Send per-task test metrics (a table and summary values), parity plots and the alignment report to W&B."""
    import wandb

    run = logger.experiment
    columns = ["task", "metric", "value"]
    rows = [[task, name, float(value)] for task, values in scores.items() for name, value in values.items()]
    payload: dict[str, Any] = {"test/metrics": wandb.Table(columns=columns, data=rows)}
    for key, path in plots.items():  # "<task>" (parity) or "<task>/<kind>" (an ensemble's calibration plots)
        task, _, kind = key.partition("/")
        caption = f"{task}: predicted vs true" if not kind else f"{task}: {kind.replace('_', ' ')}"
        payload[f"test/{task}/{kind or 'parity'}"] = wandb.Image(str(path), caption=caption)
    run.log(payload)
    for task, values in scores.items():
        for name, value in values.items():
            run.summary[f"test/{task}/{name}"] = value
    if alignment_report:
        run.summary["alignment_report"] = alignment_report
    for path in files:
        if Path(path).is_file():
            run.save(str(path), base_path=str(Path(path).parent), policy="now")


__all__ = ["RUN_ID_FILE", "build_loggers", "close_loggers", "build_wandb_logger", "log_test_results_to_wandb", "wandb_mode"]
