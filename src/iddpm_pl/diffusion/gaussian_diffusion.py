"""The Gaussian diffusion process of Improved DDPM: forward process, reverse process, losses.

Conventions used throughout:
- ``t`` is an int64 tensor ``[N]`` of indices into this diffusion's chain, in ``[0, T-1]``;
  index ``t`` is the paper's step ``t + 1`` (so ``t = 0`` is the decoder step).
- Images are ``[N, C, H, W]`` in [-1, 1] on the 8-bit grid.
- VLB terms (``vb``) are in bits per dimension: nats / ln 2, averaged over C, H and W.
- Functions named ``*_log_variance`` return log-variances, ``*_variance`` variances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .options import (
    LossType,
    MeanType,
    VarianceType,
    model_output_channels,
    parse_option,
)
from .respace import respaced_betas, space_timesteps
from .sampling import SamplingMixin

Model = Callable[..., torch.Tensor]


@dataclass
class PosteriorStats:
    """Mean, variance and log-variance of a Gaussian over x_{t-1}, each ``[N, C, H, W]``."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


@dataclass
class ReverseStats(PosteriorStats):
    """The model's p(x_{t-1} | x_t) plus its prediction of x_0, each ``[N, C, H, W]``."""

    pred_xstart: torch.Tensor


def _broadcast(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``values[t]`` and shape it ``[N, 1, ..., 1]`` to broadcast over ``ndim`` dims."""
    return values[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class GaussianDiffusion(SamplingMixin, nn.Module):
    """The diffusion process for a given beta schedule, with typed options.

    Args:
        betas: float64 (or float32) ``[T]`` variances of q(x_t | x_{t-1}), in (0, 1].
        mean_type: what the network's mean channels predict.
        variance_type: how Sigma_theta is chosen (learned types need 2C output channels).
        loss_type: the training objective of :meth:`training_losses`.
        lambda_vlb: weight of the VLB term in the hybrid loss (paper: 0.001). The term is
            ``lambda_vlb * T * L_t``, because sampling t uniformly estimates L_vlb / T.
        timestep_range: the network sees ``t * timestep_range / T_original`` as a float, so
            one network works for any T; ``None`` passes the integer indices unchanged.
        timestep_map: int64 ``[T]`` original step index of every step of a respaced chain
            (``None`` for an unspaced one: ``arange(T)``).
        original_num_timesteps: length of the chain the network was trained on (defaults
            to ``T``); the model-time scaling uses it.

    Every schedule-derived tensor is a float32 buffer computed in float64, so it moves with
    ``.to(device)`` and is saved in the ``state_dict``.
    """

    def __init__(
        self,
        betas: torch.Tensor | Sequence[float],
        mean_type: MeanType | str = MeanType.EPSILON,
        variance_type: VarianceType | str = VarianceType.FIXED_SMALL,
        loss_type: LossType | str = LossType.SIMPLE,
        lambda_vlb: float = 0.001,
        timestep_range: float | None = 1000.0,
        timestep_map: torch.Tensor | Sequence[int] | None = None,
        original_num_timesteps: int | None = None,
    ) -> None:
        super().__init__()
        self.mean_type = parse_option(MeanType, mean_type, "mean type")
        self.variance_type = parse_option(VarianceType, variance_type, "variance type")
        self.loss_type = parse_option(LossType, loss_type, "loss type")
        if lambda_vlb < 0:
            raise ValueError(f"lambda_vlb must be non-negative, got {lambda_vlb}")
        if timestep_range is not None and timestep_range <= 0:
            raise ValueError(f"timestep_range must be positive or None, got {timestep_range}")
        self.lambda_vlb = float(lambda_vlb)
        self.timestep_range = timestep_range

        betas64 = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas64.numel() < 1:
            raise ValueError("betas must contain at least one step (T >= 1), got an empty schedule")
        if not bool(((betas64 > 0) & (betas64 <= 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1]; got min {betas64.min().item()}, max {betas64.max().item()}"
            )
        self.num_timesteps = int(betas64.numel())
        # Kept in float64 on the CPU (not a buffer) so respacing does not inherit float32 error.
        self.betas64 = betas64.clone()
        self.original_num_timesteps = original_num_timesteps or self.num_timesteps
        if timestep_map is None:
            timestep_map = torch.arange(self.num_timesteps)
        timestep_map = torch.as_tensor(timestep_map, dtype=torch.int64)
        if timestep_map.shape != (self.num_timesteps,):
            raise ValueError(
                f"timestep_map must have one entry per step ({self.num_timesteps}), "
                f"got shape {tuple(timestep_map.shape)}"
            )
        self.register_buffer("timestep_map", timestep_map)
        self._register_schedule(betas64)

    def _register_schedule(self, betas: torch.Tensor) -> None:
        """Derive every schedule tensor in float64 and store it as a float32 buffer."""
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        # beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t); zero at t = 0.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # log beta_tilde is -inf at t = 0: use the value of the next step instead. The
        # decoder variance then stays a real Gaussian (a chain of length 1 falls back to beta).
        first = posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        posterior_variance_clipped = torch.cat([first.reshape(1), posterior_variance[1:]])
        # Fixed-large uses beta_t, except beta_tilde at the first step for a better decoder.
        fixed_large_variance = torch.cat([first.reshape(1), betas[1:]])

        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log1p(-alphas_cumprod),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_variance_clipped.log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * alphas.sqrt()
            / (1.0 - alphas_cumprod),
            "log_betas": betas.log(),
            "fixed_large_log_variance": fixed_large_variance.log(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float())

    # ------------------------------------------------------------------ bookkeeping

    def extra_repr(self) -> str:
        return (
            f"T={self.num_timesteps}, mean_type={self.mean_type.value}, "
            f"variance_type={self.variance_type.value}, loss_type={self.loss_type.value}, "
            f"lambda_vlb={self.lambda_vlb}"
        )

    def check_timesteps(self, t: torch.Tensor) -> None:
        """Raise a ValueError unless ``t`` is an integer ``[N]`` tensor in ``[0, T-1]``.

        The range check reads values back, so it runs only for CPU tensors: on an
        accelerator it would stall the training step on a device synchronisation.
        """
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"timesteps must be an int64 tensor, got dtype {t.dtype}")
        if t.ndim != 1:
            raise ValueError(f"timesteps must have shape [N], got {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() > 0:
            low, high = int(t.min()), int(t.max())
            if low < 0 or high >= self.num_timesteps:
                raise ValueError(
                    f"timesteps must lie in [0, {self.num_timesteps - 1}] for T = "
                    f"{self.num_timesteps}, got values in [{low}, {high}]"
                )

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Map chain indices ``[N]`` to what the network sees: original steps, rescaled."""
        original = self.timestep_map[t]
        if self.timestep_range is None:
            return original
        return original.float() * (self.timestep_range / self.original_num_timesteps)

    def call_model(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Run ``model(x_t, model_timesteps(t), **model_kwargs)`` and check its channels."""
        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        expected = model_output_channels(self.variance_type, x_t.shape[1])
        if (
            output.ndim != x_t.ndim
            or output.shape[1] != expected
            or output.shape[2:] != x_t.shape[2:]
        ):
            raise ValueError(
                f"model output has shape {tuple(output.shape)}, expected "
                f"[{x_t.shape[0]}, {expected}, {', '.join(map(str, x_t.shape[2:]))}] for "
                f"variance type {self.variance_type.value!r} ("
                + (
                    "a learned variance needs 2C channels: mean first, variance second)"
                    if self.variance_type.is_learned
                    else "C channels)"
                )
            )
        return output

    def respace(self, spec: str | Sequence[int]) -> GaussianDiffusion:
        """Return a diffusion over the kept steps of :func:`space_timesteps` (same options).

        Its betas are recomputed from ``alphas_cumprod`` at the kept steps, and its network
        calls receive the original step values through ``timestep_map``.
        """
        kept = space_timesteps(self.num_timesteps, spec)
        alphas_cumprod = torch.cumprod(1.0 - self.betas64, dim=0)
        original_map = self.timestep_map.cpu()
        return GaussianDiffusion(
            respaced_betas(alphas_cumprod, kept),
            mean_type=self.mean_type,
            variance_type=self.variance_type,
            loss_type=self.loss_type,
            lambda_vlb=self.lambda_vlb,
            timestep_range=self.timestep_range,
            timestep_map=original_map[torch.tensor(kept)],
            original_num_timesteps=self.original_num_timesteps,
        ).to(self.betas.device)

    # ------------------------------------------------------------------ forward process

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> PosteriorStats:
        """Return the mean, variance and log-variance of q(x_t | x_0), ``[N, C, H, W]``."""
        mean = _broadcast(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
        variance = _broadcast(1.0 - self.alphas_cumprod, t, x_start.ndim).expand_as(x_start)
        log_variance = _broadcast(self.log_one_minus_alphas_cumprod, t, x_start.ndim).expand_as(
            x_start
        )
        return PosteriorStats(mean, variance, log_variance)

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

        Args:
            x_start: ``[N, C, H, W]`` clean images.
            t: ``[N]`` chain indices.
            noise: ``[N, C, H, W]`` standard normal noise; drawn when ``None``.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            _broadcast(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
            + _broadcast(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> PosteriorStats:
        """Return q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I), ``[N, C, H, W]`` each.

        The log-variance is clipped at t = 0 to the value of the next step (beta_tilde is
        zero there); the variance is ``exp`` of that log-variance.
        """
        ndim = x_start.ndim
        mean = (
            _broadcast(self.posterior_mean_coef1, t, ndim) * x_start
            + _broadcast(self.posterior_mean_coef2, t, ndim) * x_t
        )
        log_variance = _broadcast(self.posterior_log_variance_clipped, t, ndim).expand_as(x_t)
        return PosteriorStats(mean, log_variance.exp(), log_variance)

    def predict_xstart_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Invert q_sample: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (
            _broadcast(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - _broadcast(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
        )

    def predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        """Return the eps that q_sample would need to turn ``pred_xstart`` into ``x_t``."""
        return (
            _broadcast(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - pred_xstart
        ) / _broadcast(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)

    def predict_xstart_from_xprev(
        self, x_t: torch.Tensor, t: torch.Tensor, x_prev: torch.Tensor
    ) -> torch.Tensor:
        """Invert the posterior mean: x_0 = (mu_tilde - coef2 x_t) / coef1."""
        ndim = x_t.ndim
        return (x_prev - _broadcast(self.posterior_mean_coef2, t, ndim) * x_t) / _broadcast(
            self.posterior_mean_coef1, t, ndim
        )

    # ------------------------------------------------------------------ reverse process

    def split_model_output(
        self, model_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split ``[N, C or 2C, H, W]`` into mean channels and variance channels (or None)."""
        if not self.variance_type.is_learned:
            return model_output, None
        mean_part, variance_part = model_output.chunk(2, dim=1)
        return mean_part, variance_part

    def model_log_variance(
        self, variance_output: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        """Return log Sigma_theta ``[N, C, H, W]`` for this variance type.

        For ``learned_range`` the raw output in [-1, 1] maps to ``v = (out + 1) / 2`` and
        ``log Sigma = v log beta_t + (1 - v) log beta_tilde_t``; v is not clamped.
        """
        ndim = like.ndim
        if self.variance_type is VarianceType.LEARNED:
            return variance_output
        if self.variance_type is VarianceType.LEARNED_RANGE:
            v = (variance_output + 1.0) / 2.0
            max_log = _broadcast(self.log_betas, t, ndim)
            min_log = _broadcast(self.posterior_log_variance_clipped, t, ndim)
            return v * max_log + (1.0 - v) * min_log
        if self.variance_type is VarianceType.FIXED_LARGE:
            return _broadcast(self.fixed_large_log_variance, t, ndim).expand_as(like)
        return _broadcast(self.posterior_log_variance_clipped, t, ndim).expand_as(like)

    def p_mean_variance_from_output(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> ReverseStats:
        """Turn a network output into p(x_{t-1} | x_t) and the implied prediction of x_0.

        Args:
            model_output: ``[N, C or 2C, H, W]``, mean channels first.
            x_t: ``[N, C, H, W]`` the current noisy images.
            t: ``[N]`` chain indices.
            clip_denoised: clamp the x_0 prediction to [-1, 1] before computing the mean.
            denoised_fn: applied to the x_0 prediction (after clipping), if given.
        """
        mean_output, variance_output = self.split_model_output(model_output)
        log_variance = self.model_log_variance(variance_output, t, x_t)

        def process(x: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x = denoised_fn(x)
            return x.clamp(-1.0, 1.0) if clip_denoised else x

        if self.mean_type is MeanType.PREVIOUS_X:
            pred_xstart = process(self.predict_xstart_from_xprev(x_t, t, mean_output))
            mean = mean_output
        else:
            if self.mean_type is MeanType.START_X:
                pred_xstart = process(mean_output)
            else:
                pred_xstart = process(self.predict_xstart_from_eps(x_t, t, mean_output))
            mean = self.q_posterior_mean_variance(pred_xstart, x_t, t).mean
        return ReverseStats(mean, log_variance.exp(), log_variance, pred_xstart)

    def p_mean_variance(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> ReverseStats:
        """Run the network on ``x_t`` ``[N, C, H, W]`` and return p(x_{t-1} | x_t)."""
        output = self.call_model(model, x_t, t, model_kwargs)
        return self.p_mean_variance_from_output(output.float(), x_t, t, clip_denoised, denoised_fn)

    # ------------------------------------------------------------------ likelihood terms

    def vb_terms_bpd(
        self,
        model_output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
    ) -> tuple[torch.Tensor, ReverseStats]:
        """Return the VLB term L_t in bits/dim ``[N]`` and the model's reverse statistics.

        L_t is KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the decoder
        negative log-likelihood -log p(x_0 | x_1) at t = 0.
        """
        true = self.q_posterior_mean_variance(x_start, x_t, t)
        model = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true.mean, true.log_variance, model.mean, model.log_variance))
        decoder_nll = -mean_flat(
            discretized_gaussian_log_likelihood(x_start, model.mean, 0.5 * model.log_variance)
        )
        terms = torch.where(t == 0, decoder_nll, kl) / math.log(2.0)
        return terms, model

    def prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """Return L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, ``[N]``; it has no parameters."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device)
        q = self.q_mean_variance(x_start, t)
        zeros = torch.zeros_like(x_start)
        return mean_flat(normal_kl(q.mean, q.log_variance, zeros, zeros)) / math.log(2.0)

    def training_losses(
        self,
        model: Model,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the per-example training losses at chain indices ``t``.

        Args:
            model: the network, called as ``model(x_t, model_timesteps(t), **model_kwargs)``.
            x_start: ``[N, C, H, W]`` clean images in [-1, 1].
            t: ``[N]`` int64 chain indices.
            noise: ``[N, C, H, W]`` the eps of q_sample; drawn when ``None``.

        Returns:
            ``loss``, ``mse`` and ``vb``, each ``[N]``. ``mse`` is the mean squared error of
            the mean channels against their target; ``vb`` is L_t in bits/dim, returned for
            every loss type (the importance sampler learns from it). ``loss`` is ``mse``
            (simple), ``mse + lambda_vlb * T * vb`` with the mean detached inside ``vb``
            (hybrid: the VLB term trains only the variance), or ``T * vb`` (vlb).
        """
        self.check_timesteps(t)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = self.call_model(model, x_t, t, model_kwargs)

        # The likelihood terms run in float32 whatever precision the network used.
        with torch.autocast(device_type=x_start.device.type, enabled=False):
            output = output.float()
            mean_output, variance_output = self.split_model_output(output)
            if self.mean_type is MeanType.EPSILON:
                target = noise
            elif self.mean_type is MeanType.START_X:
                target = x_start
            else:
                target = self.q_posterior_mean_variance(x_start, x_t, t).mean
            mse = mean_flat((target.float() - mean_output) ** 2)

            if self.loss_type is LossType.VLB:
                vb, _ = self.vb_terms_bpd(output, x_start, x_t, t)
                loss = self.num_timesteps * vb
            elif self.loss_type is LossType.HYBRID:
                # Stop-gradient on the mean: the VLB term trains only the variance channels.
                frozen = mean_output.detach()
                if variance_output is not None:
                    frozen = torch.cat([frozen, variance_output], dim=1)
                vb, _ = self.vb_terms_bpd(frozen, x_start, x_t, t)
                loss = mse + self.lambda_vlb * self.num_timesteps * vb
            else:
                with torch.no_grad():
                    vb, _ = self.vb_terms_bpd(output.detach(), x_start, x_t, t)
                loss = mse
        return {"loss": loss, "mse": mse, "vb": vb}

    @torch.no_grad()
    def calc_bpd_loop(
        self,
        model: Model,
        x_start: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        steps_per_call: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Evaluate the full variational bound of ``x_start`` ``[N, C, H, W]`` in bits/dim.

        Runs every step of this chain (all T, or the kept steps of a respaced diffusion,
        which still gives an upper bound on the NLL). The terms of different steps are
        independent, so ``steps_per_call`` steps share one network call of ``N *
        steps_per_call`` images: small batches then run at the speed of large ones. The
        noise is drawn step by step in the same order whatever ``steps_per_call`` is, so
        the result does not depend on it beyond float rounding.

        Returns:
            ``total_bpd`` ``[N]`` (sum of every L_t plus the prior term), ``prior_bpd`` ``[N]``,
            ``vb`` ``[N, T]`` (L_t per step, indexed by chain index), ``xstart_mse`` and
            ``mse`` ``[N, T]`` (errors of the x_0 and eps predictions).

        Raises:
            ValueError: when ``steps_per_call`` is below 1.
            FloatingPointError: when a term is NaN or infinite, naming the first step.
        """
        from tqdm.auto import tqdm

        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be at least 1, got {steps_per_call}")
        n = x_start.shape[0]
        vb = x_start.new_zeros(n, self.num_timesteps, dtype=torch.float32)
        xstart_mse = torch.zeros_like(vb)
        eps_mse = torch.zeros_like(vb)
        kwargs = model_kwargs or {}
        steps = list(range(self.num_timesteps - 1, -1, -1))
        with tqdm(total=len(steps), desc="bits/dim", disable=not progress, leave=False) as bar:
            for first in range(0, len(steps), steps_per_call):
                chunk = steps[first : first + steps_per_call]
                k = len(chunk)
                chain = torch.tensor(chunk, device=x_start.device, dtype=torch.int64)
                t = chain.repeat_interleave(n)  # [k * N]: step chunk[0] for N images, then ...
                noise = torch.cat(
                    [
                        torch.randn(x_start.shape, generator=generator, device=x_start.device)
                        for _ in chunk
                    ]
                )  # [k * N, C, H, W]
                x0 = x_start.repeat(k, *([1] * (x_start.ndim - 1)))
                x_t = self.q_sample(x0, t, noise)
                call_kwargs = {
                    key: value.repeat(k, *([1] * (value.ndim - 1))) for key, value in kwargs.items()
                }
                output = self.call_model(model, x_t, t, call_kwargs).float()
                terms, stats = self.vb_terms_bpd(output, x0, x_t, t, clip_denoised)
                eps = self.predict_eps_from_xstart(x_t, t, stats.pred_xstart)
                vb[:, chain] = terms.reshape(k, n).T
                xstart_mse[:, chain] = mean_flat((stats.pred_xstart - x0) ** 2).reshape(k, n).T
                eps_mse[:, chain] = mean_flat((eps - noise) ** 2).reshape(k, n).T
                bar.update(k)

        prior = self.prior_bpd(x_start)
        total = vb.sum(dim=1) + prior
        if not bool(torch.isfinite(vb).all()):
            bad = (~torch.isfinite(vb)).any(dim=0).nonzero().flatten().tolist()
            raise FloatingPointError(
                f"the VLB term is not finite at chain indices {bad[:10]}; check the model "
                "output and the variance type (a learned log-variance may have diverged)"
            )
        return {
            "total_bpd": total,
            "prior_bpd": prior,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": eps_mse,
        }
