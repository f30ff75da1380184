"""Build the run's objects from a composed config (shared by train, sample and evaluate)."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from iddpm_pl.diffusion import GaussianDiffusion, TimestepSampler, model_output_channels
from iddpm_pl.lightning_module import DiffusionModule
from iddpm_pl.utils.config import ConfigError

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> DiffusionModule:
    """Instantiate the diffusion, the timestep sampler, the network and the LightningModule."""
    diffusion: GaussianDiffusion = hydra.utils.instantiate(cfg.diffusion)
    sampler: TimestepSampler = hydra.utils.instantiate(cfg.timestep_sampler)
    out_channels = model_output_channels(diffusion.variance_type, int(cfg.image.channels))
    net = hydra.utils.instantiate(cfg.model, out_channels=out_channels)
    return hydra.utils.instantiate(
        cfg.module,
        net=net,
        diffusion=diffusion,
        timestep_sampler=sampler,
        class_conditional=cfg.model.get("num_classes") is not None,
    )


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """Instantiate the data module, run its cheap path/format checks and match it to ``image``."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check()
    expected = (int(cfg.image.size), int(cfg.image.channels))
    actual = (int(datamodule.image_size), int(datamodule.channels))
    if expected != actual:
        raise ConfigError(
            f"image (size, channels) = {expected} in the config, but the data module yields "
            f"{actual}; fix image.size / image.channels in the data config"
        )
    return datamodule


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[pl.Callback]:
    """Instantiate every callback under ``cfg.callbacks`` (the LR monitor needs a logger)."""
    callbacks = []
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is None or "_target_" not in spec:
            continue
        if name == "lr_monitor" and not has_logger:
            log.info("no logger configured: skipping the learning-rate monitor")
            continue
        callbacks.append(hydra.utils.instantiate(spec))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Instantiate every logger under ``cfg.logger`` (``logger=none`` gives an empty list)."""
    loggers = []
    for spec in (cfg.get("logger") or {}).values():
        if spec is not None and "_target_" in spec:
            loggers.append(hydra.utils.instantiate(spec))
    return loggers
