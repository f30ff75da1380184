"""Gaussian KL divergences and the discretized Gaussian decoder likelihood.

All functions are elementwise (shapes broadcast) and work in nats; callers convert to
bits per dimension. They upcast to float32 and disable autocast, so the log-likelihood
terms keep full precision when the network runs in bf16 or fp16.
"""

from __future__ import annotations

import torch

# The data lie on 256 levels of [-1, 1]: the bin around each level has width 2 / 255.
HALF_BIN_WIDTH = 1.0 / 255.0
# Bin probabilities are floored at this value before the log, so a bin far in the tail
# costs at most -log(1e-12) = 27.6 nats instead of an infinite loss.
MIN_PROBABILITY = 1e-12


def _float32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


def normal_kl(
    mean1: torch.Tensor,
    log_var1: torch.Tensor,
    mean2: torch.Tensor,
    log_var2: torch.Tensor,
) -> torch.Tensor:
    """Return KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) elementwise, in nats.

    Arguments take log-variances, not variances, and broadcast against each other.
    """
    with torch.autocast(device_type=mean1.device.type, enabled=False):
        mean1, log_var1, mean2, log_var2 = _float32(mean1, log_var1, mean2, log_var2)
        return 0.5 * (
            -1.0
            + log_var2
            - log_var1
            + torch.exp(log_var1 - log_var2)
            + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
        )


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Return Phi(x), the standard normal CDF, elementwise (exact, through erf)."""
    return torch.special.ndtr(x)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Return log P(x) under a Gaussian discretized to 256 bins of [-1, 1], in nats.

    Args:
        x: data on the 8-bit grid scaled to [-1, 1], ``[N, ...]``.
        mean: Gaussian means, broadcastable to ``x``.
        log_scale: log standard deviations (half the log-variance), broadcastable to ``x``.

    The bin of level x is [x - 1/255, x + 1/255], except that the lowest bin extends to
    -inf and the highest to +inf, so the 256 probabilities sum to one.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, mean, log_scale = _float32(x, mean, log_scale)
        centred = x - mean
        inv_std = torch.exp(-log_scale)
        cdf_upper = standard_normal_cdf(inv_std * (centred + HALF_BIN_WIDTH))
        cdf_lower = standard_normal_cdf(inv_std * (centred - HALF_BIN_WIDTH))
        lowest = x < -1.0 + HALF_BIN_WIDTH
        highest = x > 1.0 - HALF_BIN_WIDTH
        probability = torch.where(
            lowest, cdf_upper, torch.where(highest, 1.0 - cdf_lower, cdf_upper - cdf_lower)
        )
        return torch.log(probability.clamp(min=MIN_PROBABILITY))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Average over every dimension but the first: ``[N, ...] -> [N]``."""
    return x.mean(dim=tuple(range(1, x.ndim)))
