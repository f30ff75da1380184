"""Time sampling and a full NLL evaluation for the default digits model.

Measures, with the code paths of ``iddpm_pl.sample`` and ``iddpm_pl.evaluate``:
  1. sampling throughput (images/s) at 50, 100 and T steps, ancestral and DDIM;
  2. the time of the full variational bound (all T steps) over the digits test split.

Without ``--ckpt`` the network has the random initial weights of the default digits config
(``conf/train.yaml`` as composed by Hydra). Throughput does not depend on the weights, but the
printed bits/dim then mean nothing.

Run: python benchmarks/sampling.py [--ckpt RUN/checkpoints/last.ckpt] [--threads 1]
     [--num-samples 64] [--repeats 1] [--steps 50 100 full] [--methods ancestral ddim]
     [--skip-nll]   (``--steps`` with no value skips sampling)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from iddpm_pl.builders import build_datamodule, build_module
from iddpm_pl.checkpoint import load_run
from iddpm_pl.evaluate import evaluate_nll
from iddpm_pl.lightning_module import DiffusionModule
from iddpm_pl.sample import draw_samples


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo (Linux), else what ``platform`` reports."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def default_module() -> tuple[DiffusionModule, object]:
    """Return the default digits module with its random initial weights, and its config."""
    with initialize_config_module("iddpm_pl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["logger=none"])
    OmegaConf.update(cfg, "paths.output_dir", "unused")
    torch.manual_seed(0)
    return build_module(cfg).eval(), cfg


def time_sampling(
    module: DiffusionModule, steps: str | None, method: str, num_samples: int, repeats: int
) -> float:
    """Return the median seconds to draw ``num_samples`` images in one batch."""
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        draw_samples(module, num_samples, num_samples, steps, method, seed=repeat, progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="a training checkpoint (default: random)")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    # One thread: on the shared 2-core machine a second thread competed with other jobs and
    # made a batch-64 forward pass about 15 times slower (2761 ms against 188 ms).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--steps", nargs="*", default=["50", "100", "full"], help="step counts, or full for T"
    )
    parser.add_argument("--methods", nargs="*", default=["ancestral", "ddim"])
    parser.add_argument("--skip-nll", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.ckpt:
        run = load_run(args.ckpt, device="cpu")
        module, cfg, weights = run.module, run.cfg, f"checkpoint {args.ckpt}"
    else:
        module, cfg = default_module()
        weights = "random initial weights"
    num_timesteps = module.diffusion.num_timesteps
    params = sum(p.numel() for p in module.net.parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
        f"{params / 1e6:.2f}M-parameter UNet, T = {num_timesteps}, {weights}"
    )

    if args.steps and args.methods:
        print(f"\n| steps | method | seconds for {args.num_samples} images | images/s |")
        print("|---|---|---|---|")
    for steps in args.steps:
        for method in args.methods:
            spec = None if steps == "full" else steps
            seconds = time_sampling(module, spec, method, args.num_samples, args.repeats)
            label = f"{num_timesteps} (full chain)" if spec is None else spec
            print(f"| {label} | {method} | {seconds:.1f} | {args.num_samples / seconds:.2f} |")

    if args.skip_nll:
        return
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    images, labels = datamodule.uint8_images("test"), datamodule.labels("test")
    summary, _ = evaluate_nll(module, images, labels, steps=None, batch_size=256, progress=False)
    print(
        f"\nfull NLL of the test split: {summary['num_images']} images x "
        f"{summary['num_steps']} steps in {summary['seconds']:.1f} s "
        f"({summary['bpd']:.3f} bits/dim)"
    )


if __name__ == "__main__":
    main()
