"""Plot the mean VLB term and the timestep sampler's p_t against t, and log both to W&B."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

VB_KEY = "plots/vb_per_t"
WEIGHTS_KEY = "plots/timestep_p_t"


def plot_vb_per_t(mean_vb: torch.Tensor, counts: torch.Tensor) -> Figure:
    """Draw the mean VLB term ``L_t`` (bits/dim) against t, on a log axis, from ``[T]`` tensors.

    Steps without a value (``counts == 0``) are left out, so gaps show where no t was drawn.
    """
    seen = counts > 0
    steps = torch.arange(mean_vb.numel())[seen].numpy()
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(steps, mean_vb[seen].numpy(), marker=".", markersize=3, linewidth=1)
    # The terms near t = 0 are orders of magnitude above the rest.
    if bool((mean_vb[seen] > 0).all()):
        axes.set_yscale("log")
    axes.set_xlabel("t")
    axes.set_ylabel("mean L_t (bits/dim)")
    axes.set_title(f"VLB term per step, {int(counts.sum())} values")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_timestep_weights(weights: torch.Tensor) -> Figure:
    """Draw the timestep sampler's p_t ``[T]`` against t, with the uniform 1/T for reference."""
    num_timesteps = weights.numel()
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(np.arange(num_timesteps), weights.numpy(), linewidth=1, label="p_t")
    axes.axhline(1.0 / num_timesteps, color="gray", linestyle="--", linewidth=1, label="1/T")
    if bool((weights > 0).all()):
        axes.set_yscale("log")
    axes.set_xlabel("t")
    axes.set_ylabel("p_t")
    axes.set_title("timestep sampler")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render a figure with the Agg backend and return its pixels, uint8 ``[H, W, 3]``."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class WandbPlotsCallback(pl.Callback):
    """Log two plots against t: the mean of recent VLB terms and the sampler's p_t.

    After every training batch the callback adds ``pl_module.last_timesteps`` and
    ``pl_module.last_vb`` to per-t sums, on the device (no sync per step). Under DDP these
    are rank 0's own examples only, a random 1/W of the global batch. Rank 0 plots after
    each validation pass (not the sanity check), and also every ``every_n_steps`` steps when
    that is positive. It logs ``plots/vb_per_t`` (the mean of each L_t since the previous
    plot) and ``plots/timestep_p_t`` (``timestep_sampler.weights()``) as images to every
    W&B logger and as figures to TensorBoard, then starts a new window. Without such a
    logger the callback does nothing.

    Args:
        every_n_steps: also plot every this many optimizer steps (0: after validation only).
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be non-negative, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.enabled = False
        self.vb_sum: torch.Tensor | None = None
        self.vb_count: torch.Tensor | None = None
        self._last_plot_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.enabled = trainer.is_global_zero and any(
            isinstance(logger, (WandbLogger, TensorBoardLogger)) for logger in trainer.loggers
        )
        if not self.enabled:
            log.debug("no W&B or TensorBoard logger on this rank: VLB and p_t plots are off")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.enabled or pl_module.last_timesteps is None:
            return
        num_timesteps = pl_module.diffusion.num_timesteps
        self.accumulate(pl_module.last_timesteps, pl_module.last_vb, num_timesteps)
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.plot(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            self.plot(trainer, pl_module)

    def accumulate(self, t: torch.Tensor, vb: torch.Tensor, num_timesteps: int) -> None:
        """Add VLB terms ``vb`` ``[N]`` (bits/dim) drawn at steps ``t`` ``[N]`` to the window."""
        if self.vb_sum is None or self.vb_sum.device != vb.device:
            self.vb_sum = torch.zeros(num_timesteps, dtype=torch.float64, device=vb.device)
            self.vb_count = torch.zeros(num_timesteps, dtype=torch.int64, device=vb.device)
        self.vb_sum.index_add_(0, t, vb.detach().double())
        self.vb_count.index_add_(0, t, torch.ones_like(t))

    def window_mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean VLB term per t (NaN where none was drawn) and the counts, CPU ``[T]``."""
        assert self.vb_sum is not None and self.vb_count is not None
        counts = self.vb_count.cpu()
        mean = self.vb_sum.cpu() / counts.clamp(min=1)
        return torch.where(counts > 0, mean, torch.nan), counts

    @rank_zero_only
    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the plots of the current window at the current step, then clear the window."""
        step = trainer.global_step
        if step == self._last_plot_step:
            return
        self._last_plot_step = step
        figures = {WEIGHTS_KEY: plot_timestep_weights(pl_module.timestep_sampler.weights())}
        if self.vb_count is not None and int(self.vb_count.sum()) > 0:
            mean, counts = self.window_mean()
            figures[VB_KEY] = plot_vb_per_t(mean, counts)
            self.vb_sum.zero_()
            self.vb_count.zero_()
        for logger in trainer.loggers:
            for key, figure in figures.items():
                if isinstance(logger, WandbLogger):
                    logger.log_image(key, [figure_to_array(figure)], step=step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(key, figure, step, close=False)
