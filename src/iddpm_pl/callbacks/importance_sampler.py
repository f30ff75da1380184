"""Keep the timestep sampler in step with the per-step VLB terms, on every rank."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from iddpm_pl.diffusion import LossSecondMomentResampler

CHECKPOINT_KEY = "timestep_sampler"


class ImportanceSamplerCallback(pl.Callback):
    """Update ``pl_module.timestep_sampler`` with ``(t, vb)`` gathered from every rank.

    After each training batch, ``(t, vb)`` of every rank are gathered with ``all_gather``
    (a no-op on one process) and fed to ``update`` in rank order, so that every rank holds
    the same history and draws t from the same p_t. The sampler state is saved in the
    checkpoint, so a resumed run samples exactly as an uninterrupted one.

    Args:
        log_every_n_steps: how often to log the warm-up fraction and the entropy of p_t.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be at least 1, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        sampler = pl_module.timestep_sampler
        if not sampler.learns_from_losses or pl_module.last_timesteps is None:
            return
        t = pl_module.all_gather(pl_module.last_timesteps)
        vb = pl_module.all_gather(pl_module.last_vb)
        # all_gather adds a leading world-size dimension only under several processes.
        sampler.update(t.reshape(-1), vb.reshape(-1).float())
        if trainer.global_step % self.log_every_n_steps == 0:
            self._log_state(pl_module, sampler)

    @staticmethod
    def _log_state(pl_module: pl.LightningModule, sampler: Any) -> None:
        metrics = {"sampler/entropy": sampler.entropy()}
        if isinstance(sampler, LossSecondMomentResampler):
            metrics["sampler/warmup_fraction"] = sampler.warmup_fraction
        for name, value in metrics.items():
            pl_module.log(
                name, torch.tensor(value), on_step=True, on_epoch=False, rank_zero_only=True
            )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = pl_module.timestep_sampler.state_dict()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if CHECKPOINT_KEY in checkpoint:
            pl_module.timestep_sampler.load_state_dict(checkpoint[CHECKPOINT_KEY])
