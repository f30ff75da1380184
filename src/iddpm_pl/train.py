"""Train Improved DDPM: ``python -m iddpm_pl.train [group=option ...] [key=value ...]``.

``main`` is the thin ``@hydra.main`` shell; :func:`train` takes a composed config, so
tests and notebooks can call it directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from iddpm_pl.builders import build_callbacks, build_datamodule, build_loggers, build_module
from iddpm_pl.utils import resolvers  # noqa: F401  (registers the config resolvers)
from iddpm_pl.utils.config import print_config_tree, validate_config

log = logging.getLogger(__name__)


def configure_wandb_dirs(output_dir: Path) -> None:
    """Keep W&B's files inside the run directory unless the user chose other folders."""
    os.environ.setdefault("WANDB_DIR", str(output_dir))
    os.environ.setdefault("WANDB_CACHE_DIR", str(output_dir / ".wandb_cache"))
    os.environ.setdefault("WANDB_CONFIG_DIR", str(output_dir / ".wandb_config"))
    os.environ.setdefault("WANDB_SILENT", "true")


def log_hyperparameters(cfg: DictConfig, module: pl.LightningModule, trainer: pl.Trainer) -> None:
    """Send the resolved config and the parameter counts to every logger."""
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hparams["params/net"] = sum(p.numel() for p in module.net.parameters())
    hparams["params/trainable"] = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    world = trainer.world_size
    hparams["global_batch_size"] = int(cfg.data.batch_size) * world
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def finish_wandb(trainer: pl.Trainer | None, failed: bool) -> None:
    """Close the W&B run (marked failed when training raised), so the next job gets its own."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train from a composed config; return the final metrics and the output paths."""
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    configure_wandb_dirs(output_dir)
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
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        failed = False
    finally:
        finish_wandb(trainer, failed)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = next((c for c in trainer.checkpoint_callbacks), None)
    result = {
        "metrics": metrics,
        "output_dir": str(output_dir),
        "last_checkpoint": getattr(checkpoint, "last_model_path", None) or None,
        "best_checkpoint": getattr(checkpoint, "best_model_path", None) or None,
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
    """Hydra entry point; returns val/bpd so sweepers (Optuna) can minimise it."""
    torch.set_float32_matmul_precision("high")
    result = train(cfg)
    return result["metrics"].get("val/bpd")


if __name__ == "__main__":
    main()
