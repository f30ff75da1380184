"""Train Improved DDPM: ``python -m iddpm_pl.train [group=option ...] [key=value ...]``.

``main`` is the thin ``@hydra.main`` shell; :func:`train` takes a composed config, so
tests and notebooks can call it directly.

A sweep (``-m``) runs one job per combination, each with its own run directory and W&B
run, all in one W&B group: ``python -m iddpm_pl.train -m schedule=linear,cosine
loss=hybrid,vlb``. Every job must pair the loss with a variance that suits it, because
``loss=simple`` needs a fixed variance and ``loss=hybrid`` a learned one. So with the default
``variance=learned_range``, the grid ``schedule=linear,cosine loss=simple,hybrid`` trains the
two hybrid jobs and reports the two ``loss=simple`` jobs as failed, and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from iddpm_pl.builders import build_callbacks, build_datamodule, build_loggers, build_module
from iddpm_pl.utils import resolvers  # noqa: F401  (registers the config resolvers)
from iddpm_pl.utils.config import print_config_tree, validate_config
from iddpm_pl.utils.multirun import is_multirun, job_ranks, sweep_name

log = logging.getLogger(__name__)

# The EMA copy is kept in eval mode on purpose (no dropout), which Lightning warns about.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


# The W&B folders that configure_wandb_dirs chose, so that the next job of a multirun
# moves them into its own run directory, while folders chosen by the user stay.
_wandb_dirs_set_here: dict[str, str] = {}


def configure_wandb_dirs(output_dir: Path) -> None:
    """Keep W&B's files inside the run directory unless the user chose other folders."""
    defaults = {
        "WANDB_DIR": str(output_dir),
        "WANDB_CACHE_DIR": str(output_dir / ".wandb_cache"),
        "WANDB_CONFIG_DIR": str(output_dir / ".wandb_config"),
    }
    for name, value in defaults.items():
        current = os.environ.get(name)
        if current is None or current == _wandb_dirs_set_here.get(name):
            os.environ[name] = value
            _wandb_dirs_set_here[name] = value
    os.environ.setdefault("WANDB_SILENT", "true")


def configure_wandb_run(cfg: DictConfig) -> None:
    """Tag the W&B run with the schedule, variance, loss and ``tags``, and group sweep jobs.

    Under ``-m`` every job of the sweep joins the group ``<task_name>-<sweep folder>``,
    unless the job's overrides set ``logger.wandb.group``.
    """
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return
    diffusion = cfg.diffusion
    tags = [*(wandb_cfg.get("tags") or []), diffusion.schedule, diffusion.variance_type]
    tags += [diffusion.loss_type, *(cfg.get("tags") or [])]
    with open_dict(wandb_cfg):
        wandb_cfg.tags = list(dict.fromkeys(str(tag) for tag in tags))
        if is_multirun() and not any(
            override.startswith("logger.wandb.group=")
            for override in HydraConfig.get().overrides.task
        ):
            wandb_cfg.group = sweep_name(cfg.task_name)


def log_hyperparameters(cfg: DictConfig, module: pl.LightningModule, trainer: pl.Trainer) -> None:
    """Send the resolved config and the parameter counts to every logger."""
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hparams["params/net"] = sum(p.numel() for p in module.net.parameters())
    hparams["params/trainable"] = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    # Images per optimizer step; DDP leaves the learning rate as configured (not scaled).
    hparams["world_size"] = trainer.world_size
    hparams["global_batch_size"] = (
        int(cfg.data.batch_size) * trainer.world_size * trainer.accumulate_grad_batches
    )
    hparams["lr"] = cfg.module.optimizer.get("lr")
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def finish_wandb(trainer: pl.Trainer | None, failed: bool) -> None:
    """Close the W&B run (marked failed when training raised), so the next job gets its own."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)


def existing_file(path: str | None) -> str | None:
    """Return ``path`` if it names a file on disk (``fast_dev_run`` writes no checkpoint)."""
    return path if path and Path(path).is_file() else None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train from a composed config; return the final metrics and the output paths."""
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    configure_wandb_dirs(output_dir)
    configure_wandb_run(cfg)
    if rank_zero_only.rank == 0:
        print_config_tree(cfg, save_to=output_dir / "config_tree.yaml")

    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    trainer: pl.Trainer | None = None
    failed = True
    try:
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        if loggers:
            log_hyperparameters(cfg, module, trainer)
        with job_ranks(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        failed = False
    finally:
        finish_wandb(trainer, failed)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = next((c for c in trainer.checkpoint_callbacks), None)
    result = {
        "metrics": metrics,
        "output_dir": str(output_dir),
        "last_checkpoint": existing_file(getattr(checkpoint, "last_model_path", None)),
        "best_checkpoint": existing_file(getattr(checkpoint, "best_model_path", None)),
        "sample_dir": str(cfg.callbacks.sample_grid.output_dir)
        if cfg.get("callbacks") and cfg.callbacks.get("sample_grid")
        else None,
    }
    if rank_zero_only.rank == 0:
        log.info("run directory: %s", result["output_dir"])
        log.info("last checkpoint: %s", result["last_checkpoint"])
        log.info("best checkpoint (val/bpd): %s", result["best_checkpoint"])
        log.info("sample grids: %s", result["sample_dir"])
        if "val/bpd" in metrics:
            log.info("final val/bpd (EMA, estimate): %.4f", metrics["val/bpd"])
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns val/bpd so sweepers (Optuna) can minimise it.

    A single run raises on failure. A multirun job logs the error with its traceback and
    returns ``None`` instead, so the sweep goes on with its next job. The Optuna sweeper
    records such a trial as failed.
    """
    torch.set_float32_matmul_precision("high")
    if not is_multirun():
        return train(cfg)["metrics"].get("val/bpd")
    try:
        result = train(cfg)
    except Exception:
        hydra_cfg = HydraConfig.get()
        log.exception(
            "job %s failed (overrides: %s, output: %s); the sweep continues",
            hydra_cfg.job.num,
            " ".join(hydra_cfg.overrides.task),
            hydra_cfg.runtime.output_dir,
        )
        return None
    return result["metrics"].get("val/bpd")


if __name__ == "__main__":
    main()
