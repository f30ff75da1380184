"""Noise-schedule curves and noised images (notebook 01)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iddpm_pl.diffusion import (
    GaussianDiffusion,
    get_named_beta_schedule,
)


def schedule_curves(schedule: str, num_timesteps: int) -> dict[str, torch.Tensor]:
    """Return the per-step quantities of a named schedule, each float32 ``[T]``.

    Keys: ``tau`` = (t + 1) / T (chain index t is diffusion step t + 1),
    ``betas``, ``alphas_cumprod``, ``posterior_variance`` (beta_tilde, 0 at the first step)
    and ``variance_ratio`` = beta_tilde / beta, the range a learned-range variance spans.
    """
    diffusion = GaussianDiffusion(get_named_beta_schedule(schedule, num_timesteps))  # type: ignore[arg-type]
    steps = torch.arange(1, num_timesteps + 1, dtype=torch.float32)
    return {
        "tau": steps / num_timesteps,
        "betas": diffusion.betas.clone(),
        "alphas_cumprod": diffusion.alphas_cumprod.clone(),
        "posterior_variance": diffusion.posterior_variance.clone(),
        "variance_ratio": diffusion.posterior_variance / diffusion.betas,
    }


def first_index_at_least(values: torch.Tensor, level: float) -> int:
    """Return the first index of ``values`` ``[T]`` that is at least ``level``, or -1 if none."""
    hits = (values >= level).nonzero().flatten()
    return int(hits[0]) if hits.numel() else -1


def noise_at_fractions(
    diffusion: GaussianDiffusion,
    x_start: torch.Tensor,
    fractions: Sequence[float],
    seed: int = 0,
) -> torch.Tensor:
    """Draw x_t for ``t = round(f * (T - 1))`` at each fraction f, with one shared noise.

    Args:
        x_start: ``[N, C, H, W]`` images in [-1, 1].
        fractions: points of the chain in [0, 1].
        seed: seed of the noise; equal seeds give equal noise for every diffusion, so two
            schedules can be compared on the same draw.

    Returns:
        ``[F, N, C, H, W]``, one noised batch per fraction.
    """
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"fractions must lie in [0, 1], got {bad}")
    noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(seed))
    last = diffusion.num_timesteps - 1
    batches = []
    for fraction in fractions:
        t = torch.full((x_start.shape[0],), round(fraction * last), dtype=torch.int64)
        batches.append(diffusion.q_sample(x_start, t, noise))
    return torch.stack(batches)


def sample_photo(size: int, name: str = "grace_hopper.jpg") -> torch.Tensor:
    """Return a natural image shipped with matplotlib, centre-cropped and resized.

    Returns uint8 ``[1, 3, size, size]``.
    """
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    with Image.open(cbook.get_sample_data(name, asfileobj=False)) as image:
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.BICUBIC)
        array = np.asarray(image, dtype=np.uint8).copy()  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
