"""Respacing: run a trained chain on a subset of its steps (fewer steps at sampling time)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

_DDIM_SPEC = re.compile(r"ddim(\d+)")
_SECTIONS_SPEC = re.compile(r"\d+(,\d+)*")


def _evenly_spaced(size: int, count: int) -> list[int]:
    """Pick ``count`` indices of ``range(size)`` evenly, always keeping the first and last."""
    if count == 1:
        return [0]
    stride = (size - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


def space_timesteps(num_timesteps: int, spec: str | Sequence[int]) -> list[int]:
    """Return the sorted chain indices of ``range(num_timesteps)`` that a respaced chain keeps.

    Args:
        num_timesteps: T of the original chain.
        spec: either ``"ddimN"``, the steps ``0, s, 2s, ...`` for the integer stride s that
            gives exactly N steps, or section counts such as ``"50"`` or ``"10,15,20"`` (or
            a sequence of ints): the chain is cut into as many equal sections (the first
            ones one step longer when T does not divide) and each section keeps its count of
            steps, evenly spaced within it, first and last included.

    For T = 1000, ``"2"`` keeps {0, 999} and ``"ddim2"`` keeps {0, 500}.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")

    if isinstance(spec, str):
        text = spec.strip().replace(" ", "")
        ddim = _DDIM_SPEC.fullmatch(text)
        if ddim:
            return _ddim_steps(num_timesteps, int(ddim.group(1)), spec)
        if not _SECTIONS_SPEC.fullmatch(text):
            raise ValueError(
                f"invalid respacing spec {spec!r}; use a step count such as '50', section "
                "counts such as '10,15,20', or a DDIM stride spec such as 'ddim25'"
            )
        counts = [int(part) for part in text.split(",")]
    else:
        counts = [int(part) for part in spec]
        if not counts:
            raise ValueError("respacing spec is empty; give at least one step count")

    if any(count < 1 for count in counts):
        raise ValueError(f"every section must keep at least one step, got counts {counts}")
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"respacing spec {spec!r} asks for {count} steps in section {i}, which has "
                f"only {size} of T = {num_timesteps} steps; lower the count"
            )
        kept.extend(start + index for index in _evenly_spaced(size, count))
        start += size
    return sorted(set(kept))


def _ddim_steps(num_timesteps: int, count: int, spec: str) -> list[int]:
    for stride in range(1, num_timesteps + 1):
        steps = list(range(0, num_timesteps, stride))
        if len(steps) == count:
            return steps
    raise ValueError(
        f"respacing spec {spec!r}: no integer stride gives exactly {count} steps of "
        f"T = {num_timesteps}; choose another count or use section counts such as '{count}'"
    )


def respaced_betas(alphas_cumprod: torch.Tensor, kept: Sequence[int]) -> torch.Tensor:
    """Return float64 ``[K]`` betas of the chain through the kept steps.

    ``beta_i = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}`` (with alpha_bar before the first
    kept step equal to 1), so the respaced chain has the same marginals q(x_t | x_0) at
    every kept step.
    """
    alphas_cumprod = alphas_cumprod.double()
    kept_alphas = alphas_cumprod[torch.as_tensor(list(kept), dtype=torch.int64)]
    previous = torch.cat([kept_alphas.new_ones(1), kept_alphas[:-1]])
    return 1.0 - kept_alphas / previous
