"""Pure-PyTorch Improved DDPM: schedules, the Gaussian diffusion, losses, samplers.

Glossary (paper symbol -> code name): beta_t -> ``betas``; alpha_bar_t -> ``alphas_cumprod``;
beta_tilde_t -> ``posterior_variance``; mu_tilde_t -> ``q_posterior_mean_variance(...).mean``;
L_t -> ``vb`` (bits/dim); L_T -> ``prior_bpd``; lambda -> ``lambda_vlb``.
This package imports neither Lightning nor Hydra.
"""

from .gaussian_diffusion import GaussianDiffusion, PosteriorStats, ReverseStats
from .likelihood import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    standard_normal_cdf,
)
from .options import LossType, MeanType, VarianceType, model_output_channels, parse_option
from .respace import respaced_betas, space_timesteps
from .schedules import (
    SCHEDULE_NAMES,
    betas_for_alpha_bar,
    cosine_beta_schedule,
    get_named_beta_schedule,
    linear_beta_schedule,
)
from .timestep_sampler import LossSecondMomentResampler, TimestepSampler, UniformSampler

__all__ = [
    "SCHEDULE_NAMES",
    "GaussianDiffusion",
    "LossSecondMomentResampler",
    "LossType",
    "MeanType",
    "PosteriorStats",
    "ReverseStats",
    "TimestepSampler",
    "UniformSampler",
    "VarianceType",
    "betas_for_alpha_bar",
    "cosine_beta_schedule",
    "create_diffusion",
    "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule",
    "linear_beta_schedule",
    "mean_flat",
    "model_output_channels",
    "normal_kl",
    "parse_option",
    "respaced_betas",
    "space_timesteps",
    "standard_normal_cdf",
]


def create_diffusion(
    schedule: str = "cosine",
    num_timesteps: int = 1000,
    mean_type: MeanType | str = MeanType.EPSILON,
    variance_type: VarianceType | str = VarianceType.LEARNED_RANGE,
    loss_type: LossType | str = LossType.HYBRID,
    lambda_vlb: float = 0.001,
    timestep_range: float | None = 1000.0,
) -> GaussianDiffusion:
    """Build a :class:`GaussianDiffusion` from a schedule name (the Hydra configs call this)."""
    return GaussianDiffusion(
        get_named_beta_schedule(schedule, num_timesteps),
        mean_type=mean_type,
        variance_type=variance_type,
        loss_type=loss_type,
        lambda_vlb=lambda_vlb,
        timestep_range=timestep_range,
    )
