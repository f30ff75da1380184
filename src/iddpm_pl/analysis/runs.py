"""Runs and checkpoints for the notebooks: compose, train or reuse, load, read splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"

# A UNet of about 48k parameters (digits config): a training step of batch 64 took about 75 ms
# on one CPU core, so a notebook can train its own model when no checkpoint is given. T and
# the step count are left to the caller.
TINY_OVERRIDES: tuple[str, ...] = (
    "model.model_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[4]",
    "model.num_groups=4",
    "model.num_heads=2",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.limit_val_batches=1",
    "callbacks.sample_grid.every_n_steps=0",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.steps=5",
)


def compose_config(overrides: Sequence[str], output_dir: str | Path) -> DictConfig:
    """Compose the package's ``train`` config with Hydra overrides, writing to ``output_dir``.

    The result can go straight to :func:`iddpm_pl.train.train`; ``paths.output_dir`` (normally
    Hydra's run directory) is set to ``output_dir``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(output_dir).resolve())
    return cfg


def train_or_reuse(
    checkpoint: str | Path, overrides: Sequence[str], output_dir: str | Path
) -> Path:
    """Return ``checkpoint`` if that file exists; otherwise train a run and return its last one.

    Args:
        checkpoint: a ``.ckpt`` path, or ``""`` to train.
        overrides: Hydra overrides of the run trained when there is no checkpoint.
        output_dir: the run writes its config and checkpoints to a new time-stamped folder
            inside it, so a second run never mixes its files with the first.
    """
    from iddpm_pl.train import train

    if checkpoint and Path(checkpoint).is_file():
        return Path(checkpoint)
    if checkpoint:
        log.warning("checkpoint %s does not exist: training a short run instead", checkpoint)
    run_dir = _fresh_dir(Path(output_dir))
    result = train(compose_config(overrides, run_dir))
    if not result["last_checkpoint"]:
        raise RuntimeError(
            f"the run in {run_dir} saved no last checkpoint; keep callbacks.model_checkpoint "
            "with save_last: true in its config"
        )
    return Path(result["last_checkpoint"])


def _fresh_dir(parent: Path) -> Path:
    """Return ``parent/<time stamp>``, with a numeric suffix if that folder already exists."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    candidate, suffix = parent / stamp, 1
    while candidate.exists():
        candidate, suffix = parent / f"{stamp}_{suffix}", suffix + 1
    return candidate


def run_config(checkpoint: str | Path) -> DictConfig:
    """Return the config of the run that wrote ``checkpoint`` (``<run>/checkpoints/*.ckpt``).

    A command-line run keeps it in ``<run>/.hydra/config.yaml``; a run started from Python
    (:func:`iddpm_pl.train.train`) in ``<run>/config_tree.yaml``.
    """
    run_dir = Path(checkpoint).resolve().parent.parent
    for candidate in (run_dir / ".hydra" / "config.yaml", run_dir / "config_tree.yaml"):
        if candidate.is_file():
            return OmegaConf.load(candidate)  # type: ignore[return-value]
    raise FileNotFoundError(
        f"no run config next to {checkpoint}: expected {run_dir}/.hydra/config.yaml or "
        f"{run_dir}/config_tree.yaml (a checkpoint must stay inside its run's checkpoints/)"
    )


def load_module(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild a run's :class:`~iddpm_pl.lightning_module.DiffusionModule` and load its weights.

    Returns the module in eval mode; ``module.ema.module`` is the EMA network, and
    ``module.timestep_sampler`` contains the sampler state saved with the checkpoint (the
    importance sampler's loss history), when there is one.
    """
    from iddpm_pl.builders import build_module
    from iddpm_pl.callbacks.importance_sampler import CHECKPOINT_KEY

    module = build_module(run_config(checkpoint))
    state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    module.load_state_dict(state["state_dict"])
    if CHECKPOINT_KEY in state:
        module.timestep_sampler.load_state_dict(state[CHECKPOINT_KEY])
    return module.eval()


def split_images(cfg: DictConfig, split: str, num_images: int | None = None) -> torch.Tensor:
    """Return the first ``num_images`` images of a data split as uint8 ``[N, C, H, W]``."""
    from iddpm_pl.builders import build_datamodule

    datamodule = build_datamodule(cfg)
    images = datamodule.uint8_images(split)
    return images if num_images is None else images[:num_images]


def uint8_to_model(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 ``[N, C, H, W]`` to float32 in [-1, 1] on the 8-bit grid (``u8 / 127.5 - 1``)."""
    return images.float() / 127.5 - 1.0
