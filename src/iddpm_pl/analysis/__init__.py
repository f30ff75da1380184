"""Helpers behind the notebooks in ``notebooks/``: every computation a notebook shows lives here.

Grouped by notebook:

- runs and checkpoints (all): :func:`compose_config`, :func:`train_or_reuse`,
  :func:`load_module`, :func:`split_images`;
- 01 noise schedules: :func:`schedule_curves`, :func:`first_index_at_least`,
  :func:`noise_at_fractions`, :func:`sample_photo`;
- 02 VLB terms: :func:`cumulative_share`, :func:`leading_share`;
- 03 importance sampling: :func:`vlb_terms`, :func:`trace_importance_sampler`,
  :func:`estimator_stats`, :func:`vlb_gradient_stats`;
- 04 fast sampling: :func:`with_variance_type`, :class:`MeanChannels`,
  :func:`fixed_variance_model`, :func:`draw_samples`, :class:`RandomConvFeatures`,
  :func:`frechet_distance`.

Conventions are the package's: images ``[N, C, H, W]`` in [-1, 1] (or uint8 where named),
``t`` int64 ``[N]`` chain indices, VLB terms in bits per dimension.
"""

from iddpm_pl.analysis.fast_sampling import (
    MeanChannels,
    RandomConvFeatures,
    draw_samples,
    fixed_variance_model,
    frechet_distance,
    with_variance_type,
)
from iddpm_pl.analysis.importance import (
    EstimatorStats,
    SamplerSnapshot,
    estimator_stats,
    trace_importance_sampler,
    vlb_gradient_stats,
    vlb_terms,
)
from iddpm_pl.analysis.runs import (
    CONFIG_DIR,
    TINY_OVERRIDES,
    compose_config,
    load_module,
    run_config,
    split_images,
    train_or_reuse,
    uint8_to_model,
)
from iddpm_pl.analysis.schedules import (
    first_index_at_least,
    noise_at_fractions,
    sample_photo,
    schedule_curves,
)
from iddpm_pl.analysis.vlb import cumulative_share, leading_share

__all__ = [
    "CONFIG_DIR",
    "TINY_OVERRIDES",
    "EstimatorStats",
    "MeanChannels",
    "RandomConvFeatures",
    "SamplerSnapshot",
    "compose_config",
    "cumulative_share",
    "draw_samples",
    "estimator_stats",
    "first_index_at_least",
    "fixed_variance_model",
    "frechet_distance",
    "leading_share",
    "load_module",
    "noise_at_fractions",
    "run_config",
    "sample_photo",
    "schedule_curves",
    "split_images",
    "trace_importance_sampler",
    "train_or_reuse",
    "uint8_to_model",
    "vlb_gradient_stats",
    "vlb_terms",
    "with_variance_type",
]
