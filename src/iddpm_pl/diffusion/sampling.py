"""Ancestral (DDPM) and DDIM sampling, as methods of ``GaussianDiffusion``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .gaussian_diffusion import GaussianDiffusion

Model = Callable[..., torch.Tensor]


def _noise_like(
    shape: Sequence[int], device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=device)


def _last(steps: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    final: dict[str, torch.Tensor] = {}
    for final in steps:  # noqa: B007 - only the last step is kept
        pass
    return final


class SamplingMixin:
    """Sampling loops; they run the chain from index T-1 down to 0 of ``self``.

    Every loop takes ``noise`` (the starting x_T) or a ``generator`` for reproducible draws,
    and runs under ``torch.no_grad``. On a respaced diffusion they take its K steps.
    """

    def _start(
        self: GaussianDiffusion,
        shape: Sequence[int],
        noise: torch.Tensor | None,
        device: torch.device | str | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if device is None:
            device = self.betas.device
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
            return noise.to(device)
        return _noise_like(shape, torch.device(device), generator)

    def p_sample(
        self: GaussianDiffusion,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Draw x_{t-1} ~ p(x_{t-1} | x_t); returns ``sample`` and ``pred_xstart`` ``[N, C, H, W]``."""
        stats = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs=model_kwargs)
        noise = _noise_like(x_t.shape, x_t.device, generator)
        # No noise is added at the last step (t = 0): the sample is the decoder mean.
        nonzero = (t != 0).float().reshape(-1, *([1] * (x_t.ndim - 1)))
        sample = stats.mean + nonzero * torch.exp(0.5 * stats.log_variance) * noise
        return {"sample": sample, "pred_xstart": stats.pred_xstart}

    @torch.no_grad()
    def p_sample_loop_progressive(
        self: GaussianDiffusion,
        model: Model,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``sample``, ``pred_xstart`` and ``t`` after every ancestral step."""
        x = self._start(shape, noise, device, generator)
        for step in tqdm(
            range(self.num_timesteps - 1, -1, -1), desc="sampling", disable=not progress
        ):
            t = torch.full((shape[0],), step, device=x.device, dtype=torch.int64)
            out = self.p_sample(model, x, t, clip_denoised, model_kwargs, generator)
            x = out["sample"]
            yield {**out, "t": t}

    def p_sample_loop(
        self: GaussianDiffusion,
        model: Model,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw samples ``shape = [N, C, H, W]`` by ancestral sampling over every step."""
        steps = self.p_sample_loop_progressive(
            model, shape, noise, clip_denoised, model_kwargs, device, generator, progress
        )
        return _last(steps)["sample"]

    def ddim_sample(
        self: GaussianDiffusion,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Take one DDIM step (Song et al. 2021, eq. 12); ``eta = 0`` is deterministic.

        ``sigma = eta * sqrt((1 - a_prev) / (1 - a)) * sqrt(1 - a / a_prev)`` with
        ``a = alpha_bar_t``, and ``eta = 1`` matches the ancestral variance beta_tilde.
        """
        if eta < 0:
            raise ValueError(f"DDIM eta must be non-negative, got {eta}")
        stats = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs=model_kwargs)
        eps = self.predict_eps_from_xstart(x_t, t, stats.pred_xstart)
        shape = (-1, *([1] * (x_t.ndim - 1)))
        alpha_bar = self.alphas_cumprod[t].reshape(shape)
        alpha_bar_prev = self.alphas_cumprod_prev[t].reshape(shape)
        sigma = (
            eta
            * torch.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
            * torch.sqrt(1.0 - alpha_bar / alpha_bar_prev)
        )
        mean = (
            stats.pred_xstart * alpha_bar_prev.sqrt()
            + torch.sqrt((1.0 - alpha_bar_prev - sigma**2).clamp(min=0.0)) * eps
        )
        noise = _noise_like(x_t.shape, x_t.device, generator)
        nonzero = (t != 0).float().reshape(shape)
        return {"sample": mean + nonzero * sigma * noise, "pred_xstart": stats.pred_xstart}

    @torch.no_grad()
    def ddim_sample_loop_progressive(
        self: GaussianDiffusion,
        model: Model,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        eta: float = 0.0,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``sample``, ``pred_xstart`` and ``t`` after every DDIM step."""
        x = self._start(shape, noise, device, generator)
        for step in tqdm(range(self.num_timesteps - 1, -1, -1), desc="DDIM", disable=not progress):
            t = torch.full((shape[0],), step, device=x.device, dtype=torch.int64)
            out = self.ddim_sample(model, x, t, clip_denoised, model_kwargs, eta, generator)
            x = out["sample"]
            yield {**out, "t": t}

    def ddim_sample_loop(
        self: GaussianDiffusion,
        model: Model,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Draw samples ``shape = [N, C, H, W]`` with DDIM over every step of this chain."""
        steps = self.ddim_sample_loop_progressive(
            model, shape, noise, clip_denoised, model_kwargs, device, generator, progress, eta
        )
        return _last(steps)["sample"]
