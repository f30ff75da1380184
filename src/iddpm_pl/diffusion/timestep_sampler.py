"""Timestep samplers: the distribution p_t from which training draws t.

Drawing t from p_t and weighting each loss by ``1 / (T p_t)`` keeps the estimate of the
sum over t unbiased, whatever p_t is; a good p_t lowers its variance.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch


class TimestepSampler(ABC):
    """A distribution over the chain indices ``0..T-1`` of one diffusion."""

    def __init__(self, num_timesteps: int) -> None:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")
        self.num_timesteps = int(num_timesteps)

    @property
    def learns_from_losses(self) -> bool:
        """Whether :meth:`update` changes the distribution (callers can skip gathering)."""
        return False

    @abstractmethod
    def weights(self) -> torch.Tensor:
        """Return the probabilities p_t, float64 ``[T]`` summing to one."""

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``t`` int64 ``[N]`` from p_t and the importance weights ``1 / (T p_t)`` ``[N]``.

        ``generator`` is a CPU generator (draws are made on the CPU and then moved).
        """
        probs = self.weights()
        t = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * probs[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:  # noqa: B027
        """Record per-example losses ``[N]`` at ``t`` ``[N]``, already gathered from all ranks."""

    def entropy(self) -> float:
        """Return the entropy of p_t in nats (log T for the uniform distribution)."""
        probs = self.weights()
        probs = probs[probs > 0]
        return float(-(probs * probs.log()).sum())

    def state_dict(self) -> dict[str, Any]:
        return {"num_timesteps": self.num_timesteps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_timesteps"]) != self.num_timesteps:
            raise ValueError(
                f"sampler state is for T = {state['num_timesteps']}, this sampler has "
                f"T = {self.num_timesteps}"
            )


class UniformSampler(TimestepSampler):
    """p_t = 1 / T for every t; every weight is 1."""

    def weights(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)
        return t.to(device), torch.ones(batch_size, device=device)


class LossSecondMomentResampler(TimestepSampler):
    """Importance sampling with p_t proportional to sqrt(E[L_t^2]) (Nichol & Dhariwal 2021).

    Keeps the last ``history_per_term`` values of L_t for every t. Until every t has that
    many, p_t is uniform. Afterwards p_t is proportional to the root mean square of the
    stored values, mixed with ``uniform_prob`` of the uniform distribution so that every
    step keeps probability at least ``uniform_prob / T``.
    """

    def __init__(
        self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001
    ) -> None:
        super().__init__(num_timesteps)
        if history_per_term < 1:
            raise ValueError(f"history_per_term must be at least 1, got {history_per_term}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob}")
        self.history_per_term = int(history_per_term)
        self.uniform_prob = float(uniform_prob)
        self.history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)
        self.counts = torch.zeros(num_timesteps, dtype=torch.int64)

    @property
    def learns_from_losses(self) -> bool:
        return True

    @property
    def warmed_up(self) -> bool:
        """Whether every step has a full history (p_t is no longer uniform)."""
        return bool((self.counts == self.history_per_term).all())

    @property
    def warmup_fraction(self) -> float:
        """Fraction of the history slots filled, in [0, 1]."""
        return float(self.counts.sum()) / (self.num_timesteps * self.history_per_term)

    def weights(self) -> torch.Tensor:
        uniform = torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        if not self.warmed_up:
            return uniform
        rms = self.history.pow(2).mean(dim=-1).sqrt()
        total = rms.sum()
        if not math.isfinite(float(total)) or float(total) <= 0.0:
            return uniform
        return (1.0 - self.uniform_prob) * rms / total + self.uniform_prob * uniform

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each loss to the history of its step, in order, dropping the oldest."""
        if t.shape != losses.shape or t.ndim != 1:
            raise ValueError(
                f"t and losses must both have shape [N], got {tuple(t.shape)} and {tuple(losses.shape)}"
            )
        steps = t.detach().cpu().tolist()
        values = losses.detach().double().cpu().tolist()
        for step, value in zip(steps, values, strict=True):
            if not 0 <= step < self.num_timesteps:
                raise ValueError(f"timestep {step} is outside [0, {self.num_timesteps - 1}]")
            count = int(self.counts[step])
            if count == self.history_per_term:
                self.history[step, :-1] = self.history[step, 1:].clone()
                self.history[step, -1] = value
            else:
                self.history[step, count] = value
                self.counts[step] = count + 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "history_per_term": self.history_per_term,
            "uniform_prob": self.uniform_prob,
            "history": self.history.clone(),
            "counts": self.counts.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if int(state["history_per_term"]) != self.history_per_term:
            raise ValueError(
                f"sampler state keeps {state['history_per_term']} values per step, this "
                f"sampler keeps {self.history_per_term}"
            )
        self.uniform_prob = float(state["uniform_prob"])
        self.history = state["history"].clone().double()
        self.counts = state["counts"].clone().long()
