"""Checks on a composed config that fail fast, before any data is loaded or step is run."""

from __future__ import annotations

import logging
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

from iddpm_pl.diffusion import LossType, VarianceType, parse_option, space_timesteps

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A combination of settings that cannot work, with what to use instead."""


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for settings that make no sense together.

    Checked: the option names, T, the loss against the variance type, class conditioning
    against the data, the respacing of the preview sampler, and gradient clipping of a fused
    optimizer under mixed precision.
    """
    diffusion = cfg.diffusion
    variance = parse_option(VarianceType, diffusion.variance_type, "variance type (variance=...)")
    loss = parse_option(LossType, diffusion.loss_type, "loss type (loss=...)")
    num_timesteps = int(diffusion.num_timesteps)
    if num_timesteps < 1:
        raise ConfigError(f"diffusion.num_timesteps must be at least 1, got {num_timesteps}")

    if loss is LossType.HYBRID and not variance.is_learned:
        raise ConfigError(
            f"loss=hybrid with variance={variance.value}: the VLB term of the hybrid loss only "
            "trains the variance, and a fixed variance has nothing to train. Use "
            "variance=learned_range (or learned), or loss=simple for a fixed variance."
        )
    if loss is LossType.SIMPLE and variance.is_learned:
        raise ConfigError(
            f"loss=simple with variance={variance.value}: L_simple gives the variance channels "
            "no gradient, so the learned variance would stay at its initial value. Use "
            "loss=hybrid (or vlb), or a fixed variance (variance=fixed_small or fixed_large)."
        )

    num_classes = cfg.model.get("num_classes")
    if num_classes is not None:
        data_classes = cfg.image.get("num_classes")
        if data_classes is None:
            raise ConfigError(
                f"model.num_classes={num_classes} but the data ({cfg.data._target_}) has no "
                "labels; set model.num_classes=null or use a labelled data set"
            )
        if int(num_classes) != int(data_classes):
            raise ConfigError(
                f"model.num_classes={num_classes} but the data has {data_classes} classes; "
                "set model.num_classes=${image.num_classes}"
            )

    sample_grid = cfg.get("callbacks", {}).get("sample_grid") if cfg.get("callbacks") else None
    if sample_grid is not None and sample_grid.get("steps") is not None:
        try:
            space_timesteps(num_timesteps, str(sample_grid.steps))
        except ValueError as error:
            raise ConfigError(f"callbacks.sample_grid.steps: {error}") from None

    check_fused_clipping(cfg)

    sampler_target = str(cfg.timestep_sampler._target_)
    if sampler_target.endswith("LossSecondMomentResampler") and loss is LossType.SIMPLE:
        log.warning(
            "sampler=importance with loss=simple: p_t is learned from the VLB terms, which "
            "are not in this loss; the weights keep it unbiased but it is unlikely to help"
        )


def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None) -> None:
    """Print the resolved config as a rich tree (one branch per top-level key) and save it."""
    tree = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    rich.print(tree)
    if save_to is not None:
        path = Path(save_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def check_fused_clipping(cfg: DictConfig) -> None:
    """Reject gradient clipping of a fused optimizer under mixed precision.

    Lightning's mixed-precision plugin raises an error when it clips the gradients of an
    optimizer that unscales them itself (``fused=True``), but only at the first step.
    """
    trainer = cfg.get("trainer") or {}
    precision = str(trainer.get("precision", ""))
    clip = trainer.get("gradient_clip_val")
    optimizer = (cfg.get("module") or {}).get("optimizer") or {}
    if precision.endswith("-mixed") and clip and optimizer.get("fused"):
        raise ConfigError(
            f"trainer.precision={precision} with module.optimizer.fused=true and "
            f"trainer.gradient_clip_val={clip}: Lightning cannot clip the gradients of a fused "
            "optimizer under mixed precision. Set trainer.gradient_clip_val=null, or drop "
            "module.optimizer.fused."
        )
