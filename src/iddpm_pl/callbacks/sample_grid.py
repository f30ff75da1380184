"""Draw a grid of EMA samples every N training steps, save it as PNG and log it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from iddpm_pl.utils.images import make_grid, save_png, to_uint8

log = logging.getLogger(__name__)


class SampleGridCallback(pl.Callback):
    """Sample ``num_samples`` images with the EMA network every ``every_n_steps`` steps.

    Samples use a fixed seed, so grids of successive steps show the same noise evolving.
    Only rank zero samples and writes. The grid is saved as ``<output_dir>/step_XXXXXXX.png``
    and sent to the W&B and TensorBoard loggers; a final grid is drawn at the end of fit.

    Args:
        output_dir: folder for the PNG files.
        every_n_steps: sampling interval in optimizer steps (0 draws only the final grid).
        num_samples: images per grid; for a class-conditional model, labels cycle 0, 1, ...
        steps: respacing of the sampling chain (``None`` samples all T steps).
        method: ``ancestral`` or ``ddim``.
        upscale: nearest-neighbour enlargement of the saved PNG (8x8 digits are tiny).
    """

    def __init__(
        self,
        output_dir: str,
        every_n_steps: int = 500,
        num_samples: int = 64,
        steps: str | int | None = 100,
        method: str = "ancestral",
        seed: int = 0,
        upscale: int = 1,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be non-negative, got {every_n_steps}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.output_dir = Path(output_dir)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.steps = steps
        self.method = method
        self.seed = seed
        self.upscale = upscale
        self.last_path: Path | None = None
        self.last_step: int | None = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The final grid, unless the last interval already drew one at this step.
        step = trainer.global_step
        if step > 0 and not trainer.sanity_checking and step != self.last_step:
            self.draw(trainer, pl_module)

    @rank_zero_only
    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Sample, save and log one grid; returns the PNG path."""
        labels = None
        if pl_module.class_conditional:
            num_classes = int(pl_module.net.num_classes)
            labels = torch.arange(self.num_samples) % num_classes
        images = pl_module.sample(
            self.num_samples, steps=self.steps, method=self.method, labels=labels, seed=self.seed
        )
        grid = make_grid(to_uint8(images))
        path = save_png(grid, self.output_dir / f"step_{trainer.global_step:07d}.png", self.upscale)
        self.last_path, self.last_step = path, trainer.global_step
        log.info("saved %d EMA samples to %s", self.num_samples, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples/ema", [grid], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    "samples/ema", grid, trainer.global_step, dataformats="HWC"
                )
        return path
