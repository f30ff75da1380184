"""Shares of the VLB carried by the first steps of the chain (notebook 02)."""

from __future__ import annotations

import torch


def cumulative_share(terms: torch.Tensor) -> torch.Tensor:
    """Return ``[T]``: entry k is the share of ``sum(terms)`` in the first k + 1 terms."""
    total = float(terms.sum())
    if not total > 0.0:
        raise ValueError(f"the terms must have a positive sum to take shares of, got {total}")
    return terms.double().cumsum(dim=0) / total


def leading_share(terms: torch.Tensor, num_steps: int) -> float:
    """Return the share of ``sum(terms)`` in the first ``num_steps`` entries of ``terms`` ``[T]``."""
    if not 0 < num_steps <= terms.numel():
        raise ValueError(f"num_steps must lie in [1, {terms.numel()}], got {num_steps}")
    return float(cumulative_share(terms)[num_steps - 1])
