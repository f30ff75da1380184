"""Noise schedules: the variances beta_t of the forward process q(x_t | x_{t-1}).

Every schedule is computed in float64 and returned as a float64 tensor of shape ``[T]``;
``GaussianDiffusion`` derives its buffers from it in float64 before storing them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

ScheduleName = Literal["linear", "cosine"]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)

# Cosine schedule constants (Nichol & Dhariwal 2021, eq. 17): the offset s keeps beta_t from
# being tiny near t = 0, and the clip avoids the singularity of beta_t at t = T.
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def _check_num_timesteps(num_timesteps: int) -> None:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int):
        raise ValueError(f"num_timesteps must be an int, got {num_timesteps!r}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")


def linear_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """Return the DDPM linear schedule, beta rising from 1e-4 to 0.02 at T = 1000.

    Both ends are multiplied by 1000 / T, so that a chain of another length destroys
    information at a comparable rate. Returns float64 ``[T]``.
    """
    _check_num_timesteps(num_timesteps)
    if num_timesteps <= 20:
        raise ValueError(
            f"the linear schedule needs T > 20 (its last beta, 0.02 * 1000 / T, must stay "
            f"below 1), got T = {num_timesteps}; use the cosine schedule for short chains"
        )
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def betas_for_alpha_bar(
    num_timesteps: int,
    alpha_bar: Callable[[float], float],
    max_beta: float = MAX_BETA,
) -> torch.Tensor:
    """Discretise a continuous alpha_bar(tau), tau in [0, 1], into ``[T]`` float64 betas.

    ``beta_t = 1 - alpha_bar((t + 1) / T) / alpha_bar(t / T)`` for t = 0..T-1, clipped to
    at most ``max_beta``, so that the product of ``1 - beta`` follows alpha_bar(tau)/alpha_bar(0).
    """
    _check_num_timesteps(num_timesteps)
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    betas = []
    for t in range(num_timesteps):
        ratio = alpha_bar((t + 1) / num_timesteps) / alpha_bar(t / num_timesteps)
        betas.append(min(1.0 - ratio, max_beta))
    return torch.tensor(betas, dtype=torch.float64)


def cosine_alpha_bar(tau: float, offset: float = COSINE_OFFSET) -> float:
    """Return f(tau) = cos^2(((tau + s) / (1 + s)) * pi / 2), unnormalised, for tau = t / T."""
    return math.cos((tau + offset) / (1.0 + offset) * math.pi / 2.0) ** 2


def cosine_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """Return the cosine schedule of Improved DDPM as float64 ``[T]`` betas clipped at 0.999."""
    return betas_for_alpha_bar(num_timesteps, cosine_alpha_bar)


def get_named_beta_schedule(name: ScheduleName, num_timesteps: int) -> torch.Tensor:
    """Return the float64 ``[T]`` betas of the schedule called ``name`` (linear or cosine)."""
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(
        f"unknown noise schedule {name!r}; valid choices are {', '.join(SCHEDULE_NAMES)}"
    )
