"""Speed options for sampling and evaluation: the network's precision and torch.compile.

Both only change how the network runs. The diffusion arithmetic and the likelihood terms
stay in float32 (``GaussianDiffusion`` casts the network output to float32 and computes the
KL and decoder terms with autocast off).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16")


def check_precision(precision: Any) -> str:
    """Return ``precision`` as ``"32"`` or ``"bf16"``; ValueError for anything else."""
    value = str(precision)
    if value not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is invalid; use 32 (float32) or bf16 (bf16 autocast "
            "for the network)"
        )
    return value


def network_autocast(
    device: torch.device, precision: str
) -> contextlib.AbstractContextManager[Any]:
    """Return bf16 autocast on ``device`` for ``precision="bf16"``, else a no-op context."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_for_inference(net: nn.Module) -> nn.Module:
    """Return ``net`` in eval mode wrapped by ``torch.compile`` with frozen weights.

    Inductor's freezing folds the weights into the compiled graph as constants, which is
    right for a loaded checkpoint and wrong for weights that still change. The first call
    of each new input shape waits for a compilation (tens of seconds on a CPU).
    """
    net.eval().requires_grad_(False)
    log.info("compiling the network with torch.compile (the first batch waits for it)")
    return torch.compile(net, options={"freezing": True})
