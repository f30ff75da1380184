"""Typed options of the diffusion process: one enum per concept."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar


class MeanType(str, Enum):
    """What the network's mean channels predict."""

    EPSILON = "epsilon"  # the noise eps added by q(x_t | x_0)
    START_X = "x0"  # the clean image x_0
    PREVIOUS_X = "previous_x"  # the posterior mean of x_{t-1} directly


class VarianceType(str, Enum):
    """How the reverse-process variance Sigma_theta(x_t, t) is chosen."""

    FIXED_SMALL = "fixed_small"  # beta_tilde_t, the true posterior variance
    FIXED_LARGE = "fixed_large"  # beta_t (beta_tilde_1 at the first step)
    LEARNED = "learned"  # the network outputs log Sigma directly
    LEARNED_RANGE = "learned_range"  # log-space interpolation between beta_tilde_t and beta_t

    @property
    def is_learned(self) -> bool:
        """Whether the network outputs variance channels (twice the image channels)."""
        return self in (VarianceType.LEARNED, VarianceType.LEARNED_RANGE)


class LossType(str, Enum):
    """The training objective."""

    SIMPLE = "simple"  # L_simple: MSE on the mean prediction
    HYBRID = "hybrid"  # L_simple + lambda_vlb * T * L_t, with the mean detached inside L_t
    VLB = "vlb"  # T * L_t, the variational bound alone


E = TypeVar("E", bound=Enum)


def parse_option(enum_type: type[E], value: E | str, what: str) -> E:
    """Convert ``value`` to a member of ``enum_type``, or raise a ValueError listing choices."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise ValueError(f"unknown {what} {value!r}; valid choices are {choices}") from None


def model_output_channels(variance_type: VarianceType | str, image_channels: int) -> int:
    """Return the channel count the network must output for ``image_channels`` image channels."""
    variance_type = parse_option(VarianceType, variance_type, "variance type")
    return image_channels * (2 if variance_type.is_learned else 1)
