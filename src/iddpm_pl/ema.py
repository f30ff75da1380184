"""Exponential moving average (EMA) of network weights, with an optional warm-up."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(rate: float, num_updates: torch.Tensor, warmup: bool) -> torch.Tensor | float:
    """Return the decay for the next update after ``num_updates`` (a 0-dim tensor) updates.

    With ``warmup`` the decay is ``min(rate, (1 + n) / (10 + n))``, so a short run is not
    dominated by its random initial weights (at 0.9999 the average keeps e^-1 of them
    after 10,000 steps). It stays a tensor, so reading the update count needs no device sync.
    """
    if not warmup:
        return rate
    n = num_updates.float()
    return torch.clamp((1.0 + n) / (10.0 + n), max=rate)


class EMA(AveragedModel):
    """An ``AveragedModel`` whose parameters and buffers are an EMA of the wrapped network.

    The first update copies the weights; later ones apply
    ``ema = decay * ema + (1 - decay) * weights`` with one foreach lerp over all tensors.
    """

    def __init__(self, model: nn.Module, rate: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must lie in [0, 1), got {rate}")
        self.rate = float(rate)
        self.warmup = bool(warmup)
        super().__init__(model, multi_avg_fn=self._lerp, use_buffers=True)
        self.requires_grad_(False)
        self.eval()

    def _lerp(
        self,
        ema_params: list[torch.Tensor],
        current_params: list[torch.Tensor],
        num_averaged: torch.Tensor,
    ) -> None:
        # num_averaged counts updates including the initial copy, so n = num_averaged - 1.
        decay = ema_decay(self.rate, num_averaged - 1, self.warmup)
        pairs = zip(ema_params, current_params, strict=True)
        floating = [(e, c) for e, c in pairs if e.is_floating_point()]
        if floating:
            ema, current = (list(group) for group in zip(*floating, strict=True))
            if isinstance(decay, torch.Tensor):
                weight = (1.0 - decay).to(ema[0].dtype)
                torch._foreach_lerp_(ema, current, [weight] * len(ema))
            else:
                torch._foreach_lerp_(ema, current, 1.0 - decay)
        for e, c in zip(ema_params, current_params, strict=True):
            if not e.is_floating_point():
                e.copy_(c)

    def train(self, mode: bool = True) -> EMA:
        """Keep the average in eval mode (no dropout) whatever its parent's mode is."""
        return super().train(False)
