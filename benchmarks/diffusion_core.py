"""Time the diffusion arithmetic against the network it wraps.

Measures, for the default digits UNet on the CPU (median of repeated runs):
  1. the network forward + backward alone on a batch,
  2. ``training_losses`` (hybrid loss, learned-range variance) + backward,
  3. one ancestral sampling step (``p_sample``) against one bare network forward,
and prints the ratios, so the overhead of the diffusion code is visible.

Run: python benchmarks/diffusion_core.py [--batch 64] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from iddpm_pl.diffusion import create_diffusion
from iddpm_pl.models import UNet


def interleaved_medians(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Time every function once per round, round after round, and return median seconds.

    Interleaving makes load from other processes hit every variant alike, so the ratios
    stay meaningful on a shared machine.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    net = UNet(
        image_size=8,
        in_channels=1,
        out_channels=2,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(4,),
        num_heads=4,
        dropout=0.1,
        num_groups=8,
    )
    # Perturb the zero-initialised output layer so the backward pass is not trivial.
    for p in net.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    diffusion = create_diffusion("cosine", 1000, variance_type="learned_range", loss_type="hybrid")
    x = torch.rand(args.batch, 1, 8, 8) * 2 - 1
    t = torch.randint(0, 1000, (args.batch,))

    cached = net(x, t.float()).detach().requires_grad_()

    def stub(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        return cached * 1.0

    def network_train() -> None:
        net.zero_grad(set_to_none=True)
        net(x, t.float()).square().mean().backward()

    def diffusion_train() -> None:
        diffusion.training_losses(stub, x, t)["loss"].mean().backward()

    def full_train() -> None:
        net.zero_grad(set_to_none=True)
        diffusion.training_losses(net, x, t)["loss"].mean().backward()

    t_step = torch.full((args.batch,), 500)

    def network_forward() -> None:
        with torch.no_grad():
            net(x, t_step.float())

    def sample_step() -> None:
        with torch.no_grad():
            diffusion.p_sample(net, x, t_step)

    def diffusion_sample_step() -> None:
        with torch.no_grad():
            diffusion.p_sample(stub, x, t_step)

    ms = {
        name: 1000 * value
        for name, value in interleaved_medians(
            {
                "network forward+backward": network_train,
                "training_losses+backward, network stubbed": diffusion_train,
                "training_losses+backward, with network": full_train,
                "network forward": network_forward,
                "p_sample step, network stubbed": diffusion_sample_step,
                "p_sample step, with network": sample_step,
            },
            args.repeats,
        ).items()
    }
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, value in ms.items():
        print(f"{name:45s} {value:8.2f} ms")
    train_share = ms["training_losses+backward, network stubbed"] / ms["network forward+backward"]
    sample_share = ms["p_sample step, network stubbed"] / ms["network forward"]
    print(f"diffusion arithmetic / network, training step: {train_share:.3f}")
    print(f"diffusion arithmetic / network, sampling step: {sample_share:.3f}")


if __name__ == "__main__":
    main()
