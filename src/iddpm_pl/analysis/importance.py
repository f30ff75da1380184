"""Importance sampling of timesteps: traces and estimator variances (notebook 03)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from iddpm_pl.diffusion import (
    GaussianDiffusion,
    LossSecondMomentResampler,
    TimestepSampler,
)


def vlb_terms(
    diffusion: GaussianDiffusion,
    model: Callable[..., torch.Tensor],
    x_start: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Return L_t in bits/dim ``[N]`` with gradients into every output channel.

    Unlike the hybrid loss, nothing is detached: this is the term the L_vlb objective
    differentiates, whatever loss type ``diffusion`` was trained with.
    """
    x_t = diffusion.q_sample(x_start, t, noise)
    output = diffusion.call_model(model, x_t, t, model_kwargs).float()
    terms, _ = diffusion.vb_terms_bpd(output, x_start, x_t, t)
    return terms


@dataclass
class SamplerSnapshot:
    """The state of a timestep sampler after ``batches`` updates."""

    batches: int
    warmup_fraction: float
    weights: torch.Tensor  # float64 [T], p_t


@torch.no_grad()
def trace_importance_sampler(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    images: torch.Tensor,
    sampler: LossSecondMomentResampler,
    num_batches: int,
    batch_size: int,
    snapshot_every: int,
    seed: int = 0,
) -> list[SamplerSnapshot]:
    """Feed a loss-second-moment sampler the L_t of a fixed model, as training would.

    Each batch draws images, t from the sampler's current p_t and noise, computes L_t, and
    calls ``sampler.update``. The model is not trained (and runs without dropout), so the
    trace isolates how p_t moves from uniform (warm-up) to its learned shape.

    Args:
        images: ``[M, C, H, W]`` float images in [-1, 1] to draw batches from.
        sampler: updated in place.
        snapshot_every: record a snapshot every this many batches (and at 0 and the end).

    Returns:
        The snapshots, in order.
    """
    if num_batches < 1 or batch_size < 1 or snapshot_every < 1:
        raise ValueError(
            f"num_batches, batch_size and snapshot_every must be positive, got "
            f"{num_batches}, {batch_size}, {snapshot_every}"
        )
    generator = torch.Generator().manual_seed(seed)
    snapshots = [SamplerSnapshot(0, sampler.warmup_fraction, sampler.weights())]
    was_training = model.training
    model.eval()
    try:
        for batch in range(1, num_batches + 1):
            index = torch.randint(images.shape[0], (batch_size,), generator=generator)
            x_start = images[index]
            t, _ = sampler.sample(batch_size, generator=generator)
            noise = torch.randn(x_start.shape, generator=generator)
            sampler.update(t, vlb_terms(diffusion, model, x_start, t, noise))
            if batch % snapshot_every == 0 or batch == num_batches:
                snapshot = SamplerSnapshot(batch, sampler.warmup_fraction, sampler.weights())
                snapshots.append(snapshot)
    finally:
        model.train(was_training)
    return snapshots


@dataclass
class EstimatorStats:
    """Spread of a stochastic loss estimate and of its gradient over repeated draws.

    ``grad_trace_covariance`` is the trace of the gradient covariance, the sum over every
    parameter entry of its variance: the mean squared distance of one draw's gradient from
    the mean gradient. Variances are unbiased (divided by ``num_draws - 1``).
    """

    num_draws: int
    loss_mean: float
    loss_variance: float
    grad_trace_covariance: float
    grad_mean_sq_norm: float  # ||E[g]||^2, the signal the noise is measured against


def estimator_stats(
    estimate: Callable[[int], torch.Tensor],
    params: Sequence[torch.Tensor],
    num_draws: int,
) -> EstimatorStats:
    """Measure the mean and variance of a scalar estimate and of its gradient.

    Args:
        estimate: ``estimate(k)`` returns draw k of the scalar estimate, a function of
            ``params`` (it draws its own randomness).
        params: the tensors to differentiate by; ``.grad`` is left untouched.
        num_draws: number of draws, at least 2.

    Sums are kept in float64 relative to the first draw (a shifted-data variance), so the
    covariance of a small noise on a large gradient does not cancel out.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be at least 2 to measure a variance, got {num_draws}")
    params = list(params)
    first_loss, first = _loss_and_gradient(estimate(0), params)
    losses = [first_loss]
    shift_sum = torch.zeros_like(first)
    shift_sq_sum = torch.zeros_like(first)
    for k in range(1, num_draws):
        loss, gradient = _loss_and_gradient(estimate(k), params)
        losses.append(loss)
        deviation = gradient - first
        shift_sum += deviation
        shift_sq_sum += deviation**2
    n = num_draws
    entry_variance = (shift_sq_sum - shift_sum**2 / n) / (n - 1)
    mean_grad = first + shift_sum / n
    loss_values = torch.tensor(losses, dtype=torch.float64)
    return EstimatorStats(
        num_draws=n,
        loss_mean=float(loss_values.mean()),
        loss_variance=float(loss_values.var(unbiased=True)),
        grad_trace_covariance=float(entry_variance.clamp(min=0.0).sum()),
        grad_mean_sq_norm=float(mean_grad.pow(2).sum()),
    )


def _loss_and_gradient(
    loss: torch.Tensor, params: Sequence[torch.Tensor]
) -> tuple[float, torch.Tensor]:
    """Return a scalar loss as a float and its gradient as one float64 vector (0 if unused)."""
    if loss.numel() != 1:
        raise ValueError(f"estimate must return a scalar, got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = [
        (g if g is not None else torch.zeros_like(p)).detach().double().flatten()
        for g, p in zip(grads, params, strict=True)
    ]
    return float(loss.detach()), torch.cat(flat)


def vlb_gradient_stats(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    images: torch.Tensor,
    sampler: TimestepSampler,
    num_draws: int,
    batch_size: int,
    seed: int = 0,
) -> EstimatorStats:
    """Measure the L_vlb minibatch estimate ``mean(T * L_t * w_t)`` with t drawn from ``sampler``.

    Every draw takes ``batch_size`` images of ``images`` ``[M, C, H, W]`` (float in [-1, 1]),
    t and the weights ``w_t = 1 / (T p_t)`` from ``sampler`` (not updated here), and fresh
    noise. The gradient is taken with respect to every trainable parameter of ``model``.
    Its mean is an unbiased estimate of ``L_0 + ... + L_{T-1}`` (bits/dim) for any sampler;
    a better p_t shows as a smaller variance. Dropout is off during the measurement.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to measure gradients of")
    generator = torch.Generator().manual_seed(seed)
    num_timesteps = diffusion.num_timesteps

    def estimate(_: int) -> torch.Tensor:
        index = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x_start = images[index]
        t, weights = sampler.sample(batch_size, generator=generator)
        noise = torch.randn(x_start.shape, generator=generator)
        terms = vlb_terms(diffusion, model, x_start, t, noise)
        return (num_timesteps * terms * weights).mean()

    was_training = model.training
    model.eval()
    try:
        return estimator_stats(estimate, params, num_draws)
    finally:
        model.train(was_training)
