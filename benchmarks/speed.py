"""Time iddpm_pl against the reference implementation (openai/improved-diffusion), side by side.

Sections (``--sections``, comma-separated; the default runs all but ``quality``):

* ``peak``: fp32 and bf16 ``torch.mm`` throughput of this machine, the denominators of the
  achieved fractions (MFU) below.
* ``train``: one training step per config: draw t, forward, hybrid loss with learned-range
  variance, backward, AdamW step, EMA update. Ours and the reference, same net size, batch
  and thread count, timed round by round.
* ``sample``: 100 respaced ancestral steps, batch 64, digits model.
* ``nll``: the full variational bound (``calc_bpd_loop``, T = 1000) of a small batch, also
  with its chain steps stacked into network calls of ``--big-batch`` images.
* ``lightning``: the training step through ``Trainer.fit`` against a bare loop over the same
  ``DiffusionModule.training_step``, optimizer and EMA update.
* ``quality``: trains the default digits run in fp32 and on a faster path (bf16 autocast and
  a compiled UNet), two seeds each, and prints validation bits/dim against the step.

The reference is not part of this project. Export it outside the repository and pass its
folder; it is put on ``sys.path`` at run time and needs only torch and numpy::

    git --git-dir=<mirror of openai/improved-diffusion> archive HEAD | tar -x -C /tmp/ref/id
    OMP_NUM_THREADS=1 python benchmarks/speed.py --reference /tmp/ref/id --threads 1
    python benchmarks/speed.py --reference /tmp/ref/id --device cuda      # adds the paper config

Only the reference's ``script_util``, ``unet``, ``nn``, ``fp16_util`` and ``resample`` modules
are imported; none of them imports mpi4py or blobfile (its ``dist_util`` does, and is not
used), so no stub modules are needed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from iddpm_pl.diffusion import GaussianDiffusion, UniformSampler, create_diffusion
from iddpm_pl.ema import EMA
from iddpm_pl.models import UNet

NUM_TIMESTEPS = 1000
SAMPLE_STEPS = "100"
LEARNING_RATE = 1e-4
EMA_RATE = 0.9999

# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class NetConfig:
    """One UNet size and its training batch, built identically in both code bases."""

    name: str
    image_size: int
    channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]  # feature-map sizes in pixels
    batch: int
    num_heads: int = 4
    dropout: float = 0.1


CONFIGS = {
    "digits": NetConfig("digits", 8, 1, 32, (1, 2, 2), 2, (4,), 64),
    "cifar": NetConfig("cifar", 32, 3, 64, (1, 2, 2, 2), 2, (16, 8), 16),
    # The paper's CIFAR-10 net (Nichol & Dhariwal 2021): 128 channels, 3 blocks, dropout 0.3.
    "paper": NetConfig("paper", 32, 3, 128, (1, 2, 2, 2), 3, (16, 8), 128, dropout=0.3),
}


@dataclass
class Timing:
    """Seconds per call over the timed rounds: median, quartiles, best."""

    median: float
    q1: float
    q3: float
    best: float
    rounds: int


@dataclass
class Row:
    """One measured variant, as printed and saved."""

    section: str
    config: str
    variant: str
    images_per_call: int
    timing: Timing
    images_per_s: float
    flops_per_call: float | None = None
    mfu: float | None = None
    ratio_to_reference: float | None = None
    note: str = ""


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock times cover the work (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(seconds: list[float]) -> Timing:
    """Reduce a list of durations to its median, quartiles and best."""
    ordered = sorted(seconds)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
    return Timing(statistics.median(ordered), quartiles[0], quartiles[2], ordered[0], len(ordered))


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    warmup: int = 2,
) -> dict[str, Timing]:
    """Run every function once per round, round after round; return per-call timings.

    Interleaving spreads load from other processes over every variant alike, so the ratios
    of medians stay meaningful on a shared machine.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: summarize(values) for name, values in times.items()}


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """Return bf16 autocast on ``device`` when ``bf16``, else a disabled autocast."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# ----------------------------------------------------------------------------- machine


def cpu_flags() -> set[str]:
    """Read the CPU feature flags from /proc/cpuinfo (an empty set where it does not exist)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def machine_description(device: torch.device) -> dict[str, Any]:
    """Describe the versions, the threads, and the GPU or the CPU's bf16 instructions."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        flags = cpu_flags()
        info["cpu_bf16_flags"] = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    return info


def matmul_peaks(device: torch.device, rounds: int) -> dict[str, float]:
    """Measure ``torch.mm`` FLOP/s in fp32 and bf16, interleaved; the best round of each.

    On CUDA, fp32 follows ``torch.set_float32_matmul_precision`` (``high`` here, as in
    training: TF32 tensor cores).
    """
    size = 8192 if device.type == "cuda" else 2048
    operands = {
        dtype: (
            torch.randn(size, size, device=device, dtype=dtype),
            torch.randn(size, size, device=device, dtype=dtype),
        )
        for dtype in (torch.float32, torch.bfloat16)
    }
    fns = {str(dtype): partial(torch.mm, *pair) for dtype, pair in operands.items()}
    timings = time_interleaved(fns, rounds, device, warmup=2)
    flops = 2.0 * size**3
    return {
        "fp32": flops / timings[str(torch.float32)].best,
        "bf16": flops / timings[str(torch.bfloat16)].best,
        "size": float(size),
    }


# ----------------------------------------------------------------------------- builders


@dataclass
class Reference:
    """The reference modules this benchmark uses."""

    script_util: ModuleType
    unet: ModuleType
    nn: ModuleType
    fp16_util: ModuleType
    resample: ModuleType


def load_reference(path: str) -> Reference:
    """Import the reference's modules from the folder ``path`` (put on ``sys.path``)."""
    root = Path(path).expanduser().resolve()
    if not (root / "improved_diffusion" / "unet.py").is_file():
        raise SystemExit(
            f"--reference {path}: no improved_diffusion/unet.py there; export "
            "openai/improved-diffusion with git archive into a folder outside this "
            "repository and pass that folder"
        )
    sys.path.insert(0, str(root))
    names = ("script_util", "unet", "nn", "fp16_util", "resample")
    modules = {name: importlib.import_module(f"improved_diffusion.{name}") for name in names}
    return Reference(**modules)


def build_ours(cfg: NetConfig) -> UNet:
    """Build our UNet for ``cfg`` with 32 GroupNorm groups, the number the reference hard-codes."""
    return UNet(
        image_size=cfg.image_size,
        in_channels=cfg.channels,
        out_channels=2 * cfg.channels,  # learned variance: mean and variance channels
        model_channels=cfg.model_channels,
        channel_mult=cfg.channel_mult,
        num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=cfg.attention_resolutions,
        num_heads=cfg.num_heads,
        dropout=cfg.dropout,
        num_groups=32,
    )


def build_reference_net(ref: Reference, cfg: NetConfig) -> nn.Module:
    """Build the reference UNet for ``cfg`` (it takes attention sizes as downsampling factors)."""
    return ref.unet.UNetModel(
        in_channels=cfg.channels,
        model_channels=cfg.model_channels,
        out_channels=2 * cfg.channels,
        num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=tuple(cfg.image_size // r for r in cfg.attention_resolutions),
        dropout=cfg.dropout,
        channel_mult=cfg.channel_mult,
        num_heads=cfg.num_heads,
        use_scale_shift_norm=True,
    )


def perturb_(net: nn.Module, seed: int) -> nn.Module:
    """Add small noise to every weight, so zero-initialised layers give real gradients."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator).to(p))
    return net


def count_parameters(net: nn.Module) -> int:
    """Count the parameters of ``net``."""
    return sum(p.numel() for p in net.parameters())


def paired_nets(
    ref: Reference | None, cfg: NetConfig, device: torch.device
) -> tuple[Callable[[], nn.Module], Callable[[], nn.Module] | None]:
    """Return factories of fresh, identical-per-call nets (ours, reference) of equal size."""

    def ours() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same initial weights on every call
            return perturb_(build_ours(cfg), seed=1).to(device)

    if ref is None:
        return ours, None

    def reference() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return perturb_(build_reference_net(ref, cfg), seed=1).to(device)

    n_ours, n_ref = (
        count_parameters(build_ours(cfg)),
        count_parameters(build_reference_net(ref, cfg)),
    )
    if n_ours != n_ref:
        raise RuntimeError(
            f"config {cfg.name}: our UNet has {n_ours} parameters, the reference {n_ref}; "
            "the two builds differ, so their timings would not be comparable"
        )
    return ours, reference


def ours_diffusion(device: torch.device) -> GaussianDiffusion:
    """Build our diffusion: cosine, T = 1000, epsilon mean, learned-range variance, hybrid loss."""
    return create_diffusion(
        "cosine", NUM_TIMESTEPS, variance_type="learned_range", loss_type="hybrid"
    ).to(device)


def reference_diffusion(ref: Reference, respacing: str = "") -> Any:
    """Build the same process from the reference's flags.

    With ``learn_sigma`` and ``rescale_learned_sigmas`` its loss is MSE plus the VLB term
    scaled by T / 1000, which is our hybrid loss with ``lambda_vlb = 0.001``.
    """
    return ref.script_util.create_gaussian_diffusion(
        steps=NUM_TIMESTEPS,
        learn_sigma=True,
        noise_schedule="cosine",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=True,
        rescale_learned_sigmas=True,
        timestep_respacing=respacing,
    )


def images(cfg: NetConfig, n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Draw ``[n, C, H, W]`` random images on the 8-bit grid, scaled to [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
    levels = torch.randint(0, 256, shape, generator=generator)
    return (levels.float() / 127.5 - 1.0).to(device)


# ----------------------------------------------------------------------------- train step


@dataclass(frozen=True)
class OursTrain:
    """A variant of our training step."""

    name: str
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    fused_adamw: bool = False


def ours_train_step(
    make_net: Callable[[], nn.Module], variant: OursTrain, x: torch.Tensor
) -> Callable[[], None]:
    """Build our step: the work of ``DiffusionModule.training_step``, AdamW and the EMA hook."""
    device = x.device
    net = make_net()
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
    diffusion = ours_diffusion(device)
    sampler = UniformSampler(NUM_TIMESTEPS)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=variant.fused_adamw or None
    )
    ema = EMA(net, rate=EMA_RATE)
    if variant.compile:
        net.compile(dynamic=False)  # in place, as DiffusionModule(compile_net=True) does

    def step() -> None:
        t_cpu, weights = sampler.sample(x.shape[0], device="cpu")
        t, weights = t_cpu.to(device, non_blocking=True), weights.to(device, non_blocking=True)
        with autocast(device, variant.bf16):
            losses = diffusion.training_losses(net, x, t)
            loss = (losses["loss"] * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(net)

    return step


def reference_train_step(
    ref: Reference, make_net: Callable[[], nn.Module], x: torch.Tensor, bf16: bool = False
) -> Callable[[], None]:
    """Build the reference's step: ``TrainLoop.run_step`` without its logging and fp16 paths.

    Its own sampler, ``training_losses``, ``zero_grad`` and per-tensor ``update_ema``.
    The logging it does per step (``log_loss_dict``, ``_log_grad_norm``: one host read
    per parameter tensor) is left out, so the reference is timed at its fastest.
    """
    device = x.device
    net = make_net()
    params = list(net.parameters())
    diffusion = reference_diffusion(ref)
    sampler = ref.resample.UniformSampler(diffusion)
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    ema_params = [p.detach().clone() for p in params]

    def step() -> None:
        t, weights = sampler.sample(x.shape[0], device)
        ref.fp16_util.zero_grad(params)
        with autocast(device, bf16):
            losses = diffusion.training_losses(net, x, t)
            loss = (losses["loss"] * weights).mean()
        loss.backward()
        optimizer.step()
        ref.nn.update_ema(ema_params, params, rate=EMA_RATE)

    return step


def model_flops(net: nn.Module, x: torch.Tensor, backward: bool) -> float:
    """Count the FLOPs of one forward (and backward) pass on ``x`` with ``FlopCounterMode``.

    Counted with SDPA's math backend: the counter has no formula for the CPU flash kernel
    and would count its attention as zero (the arithmetic is the same either way).
    """
    t = torch.full((x.shape[0],), 500.0, device=x.device)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel([SDPBackend.MATH]):
        if backward:
            net(x, t).float().square().mean().backward()
        else:
            with torch.no_grad():
                net(x, t)
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def train_variants(device: torch.device, compile_nets: bool) -> list[OursTrain]:
    """List our training-step variants (the compiled ones only when ``compile_nets``)."""
    variants = [
        OursTrain("ours fp32"),
        OursTrain("ours bf16 autocast", bf16=True),
        OursTrain("ours bf16 + fused AdamW", bf16=True, fused_adamw=True),
        OursTrain("ours channels_last fp32", channels_last=True),
        OursTrain("ours channels_last bf16", bf16=True, channels_last=True),
    ]
    if compile_nets:
        variants += [
            OursTrain("ours compile fp32", compile=True),
            OursTrain("ours compile bf16", bf16=True, compile=True),
            OursTrain("ours compile bf16 + fused AdamW", bf16=True, compile=True, fused_adamw=True),
        ]
        if device.type == "cuda":
            variants.append(
                OursTrain(
                    "ours compile bf16 channels_last", bf16=True, channels_last=True, compile=True
                )
            )
    return variants


def bench_train(
    ref: Reference | None,
    cfg: NetConfig,
    device: torch.device,
    peaks: dict[str, float],
    rounds: int,
    compile_nets: bool,
) -> list[Row]:
    """Time our training-step variants and the reference's, interleaved."""
    make_ours, make_ref = paired_nets(ref, cfg, device)
    x = images(cfg, cfg.batch, device)
    flops_ours = model_flops(make_ours(), x, backward=True)
    fns: dict[str, Callable[[], None]] = {}
    flops: dict[str, float] = {}
    bf16_of: dict[str, bool] = {}
    if ref is not None and make_ref is not None:
        flops_ref = model_flops(make_ref(), x, backward=True)
        fns["reference fp32"] = reference_train_step(ref, make_ref, x)
        fns["reference + bf16 autocast"] = reference_train_step(ref, make_ref, x, bf16=True)
        flops.update({"reference fp32": flops_ref, "reference + bf16 autocast": flops_ref})
        bf16_of.update({"reference fp32": False, "reference + bf16 autocast": True})
    for variant in train_variants(device, compile_nets):
        fns[variant.name] = ours_train_step(make_ours, variant, x)
        flops[variant.name] = flops_ours
        bf16_of[variant.name] = variant.bf16
    fns = select(fns)
    compile_seconds = warm_compiled(fns, device)
    timings = time_interleaved(fns, rounds, device, warmup=1)
    images_of = dict.fromkeys(fns, cfg.batch)
    return make_rows("train", cfg, images_of, timings, flops, bf16_of, peaks, compile_seconds)


# Substrings from --variants; None keeps every variant.
VARIANT_FILTER: list[str] | None = None


def select(fns: dict[str, Callable[[], Any]]) -> dict[str, Callable[[], Any]]:
    """Keep ``reference fp32`` rows and the variants that ``--variants`` names.

    With few variants per process each shape has one compiled net, as in ``iddpm_pl.sample``
    or ``evaluate``. With many, a call of ``UNet.forward`` may check the guards of the
    other compiled nets' cache entries before it finds its own.
    """
    if VARIANT_FILTER is None:
        return fns
    return {
        name: fn
        for name, fn in fns.items()
        if name.startswith("reference fp32") or any(part in name for part in VARIANT_FILTER)
    }


def warm_compiled(fns: dict[str, Callable[[], object]], device: torch.device) -> dict[str, float]:
    """Call every function once (compiling the compiled ones); return the seconds taken."""
    seconds = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds[name] = time.perf_counter() - start
    return {name: s for name, s in seconds.items() if "compile" in name}


def make_rows(
    section: str,
    cfg: NetConfig,
    images_of: dict[str, int],
    timings: dict[str, Timing],
    flops: dict[str, float],
    bf16_of: dict[str, bool],
    peaks: dict[str, float],
    compile_seconds: dict[str, float],
) -> list[Row]:
    """Build rows with images/s, MFU against the matching peak and the ratio to the reference.

    The ratio divides images/s by those of the reference in fp32 at the same batch size
    (``reference fp32`` or ``reference fp32, batch N``).
    """
    reference_rates = {
        images_of[name]: images_of[name] / timing.median
        for name, timing in timings.items()
        if name.startswith("reference fp32")
    }
    rows = []
    for name, timing in timings.items():
        flop = flops.get(name)
        peak = peaks.get("bf16" if bf16_of.get(name) else "fp32")
        rate = images_of[name] / timing.median
        reference_rate = reference_rates.get(images_of[name])
        note = ""
        if name in compile_seconds:
            note = f"first call (compiling) {compile_seconds[name]:.0f} s"
        rows.append(
            Row(
                section=section,
                config=cfg.name,
                variant=name,
                images_per_call=images_of[name],
                timing=timing,
                images_per_s=rate,
                flops_per_call=flop,
                mfu=flop / timing.median / peak if flop and peak else None,
                ratio_to_reference=rate / reference_rate if reference_rate else None,
                note=note,
            )
        )
    return rows


# ----------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class OursInference:
    """A variant of our sampling or NLL loop."""

    name: str
    bf16: bool = False
    inference_mode: bool = True
    compile: bool = False
    batch: int | None = None  # None: the section's batch
    steps_per_call: int = 1  # NLL only: chain steps that share one network call


def inference_net(make_net: Callable[[], nn.Module], variant: OursInference) -> nn.Module:
    """Build an eval-mode net, compiled with inductor's weight freezing when asked.

    Freezing folds the weights into the compiled graph as constants: right for a fixed
    checkpoint, wrong for a net whose weights still change (an EMA during training).
    """
    net = make_net().eval().requires_grad_(False)
    if variant.compile:
        return torch.compile(net, dynamic=False, options={"freezing": True})
    return net


def grad_context(variant: OursInference) -> contextlib.AbstractContextManager[Any]:
    """Return ``torch.inference_mode()`` or ``torch.no_grad()``, as the variant asks."""
    return torch.inference_mode() if variant.inference_mode else torch.no_grad()


def inference_variants(compile_nets: bool, big_batch: int) -> list[OursInference]:
    """List our sampling and NLL variants (the compiled ones only when ``compile_nets``).

    The last ones run ``big_batch`` images per call: a throughput lever, not the same-batch
    comparison with the reference.
    """
    variants = [
        OursInference("ours fp32 no_grad", inference_mode=False),
        OursInference("ours fp32 inference_mode"),
        OursInference("ours bf16 inference_mode", bf16=True),
    ]
    if compile_nets:
        variants += [
            OursInference("ours compile(freezing) fp32", compile=True),
            OursInference("ours compile(freezing) bf16", bf16=True, compile=True),
        ]
    variants.append(OursInference(f"ours fp32 inference_mode, batch {big_batch}", batch=big_batch))
    if compile_nets:
        name = f"ours compile(freezing) bf16, batch {big_batch}"
        variants.append(OursInference(name, bf16=True, compile=True, batch=big_batch))
    return variants


def bench_sample(
    ref: Reference | None,
    cfg: NetConfig,
    device: torch.device,
    peaks: dict[str, float],
    rounds: int,
    compile_nets: bool,
    big_batch: int,
) -> tuple[list[Row], dict[str, float]]:
    """Time 100 respaced ancestral steps; also return each variant's gap to fp32 samples."""
    make_ours, make_ref = paired_nets(ref, cfg, device)
    shape = (cfg.batch, cfg.channels, cfg.image_size, cfg.image_size)
    diffusion = ours_diffusion(device)
    variants = inference_variants(compile_nets, big_batch)
    fns: dict[str, Callable[[], object]] = {}
    batch_of: dict[str, int] = {}
    bf16_of: dict[str, bool] = {"reference fp32": False}
    outputs: dict[str, torch.Tensor] = {}

    def ours_run(variant: OursInference, net: nn.Module) -> Callable[[], object]:
        batch = variant.batch or cfg.batch

        def run() -> None:
            generator = torch.Generator(device=device).manual_seed(0)
            # Respaced per call, as DiffusionModule.sample does.
            spaced = diffusion.respace(SAMPLE_STEPS)
            with grad_context(variant), autocast(device, variant.bf16):
                out = spaced.p_sample_loop(net, (batch, *shape[1:]), generator=generator)
            outputs[variant.name] = out

        return run

    if ref is not None and make_ref is not None:
        ref_net = make_ref().eval()
        ref_spaced = reference_diffusion(ref, SAMPLE_STEPS)

        def ref_run(bf16: bool, batch: int) -> Callable[[], object]:
            def run() -> None:
                with torch.no_grad(), autocast(device, bf16):
                    ref_spaced.p_sample_loop(ref_net, (batch, *shape[1:]), clip_denoised=True)

            return run

        fns["reference fp32"] = ref_run(False, cfg.batch)
        fns["reference + bf16 autocast"] = ref_run(True, cfg.batch)
        fns[f"reference fp32, batch {big_batch}"] = ref_run(False, big_batch)
        batch_of.update(dict.fromkeys(fns, cfg.batch))
        batch_of[f"reference fp32, batch {big_batch}"] = big_batch
        bf16_of["reference + bf16 autocast"] = True
    for variant in variants:
        fns[variant.name] = ours_run(variant, inference_net(make_ours, variant))
        batch_of[variant.name] = variant.batch or cfg.batch
        bf16_of[variant.name] = variant.bf16
    fns = select(fns)
    compile_seconds = warm_compiled(fns, device)
    timings = time_interleaved(fns, rounds, device, warmup=0)
    forward = model_flops(make_ours(), images(cfg, cfg.batch, device), backward=False)
    flops = {name: forward * int(SAMPLE_STEPS) * n / cfg.batch for name, n in batch_of.items()}
    rows = make_rows("sample", cfg, batch_of, timings, flops, bf16_of, peaks, compile_seconds)
    base = outputs.get("ours fp32 inference_mode")
    gaps = {
        name: float((out - base).abs().max())
        for name, out in outputs.items()
        if base is not None and out.shape == base.shape
    }
    return rows, gaps


def bench_nll(
    ref: Reference | None,
    cfg: NetConfig,
    device: torch.device,
    peaks: dict[str, float],
    rounds: int,
    compile_nets: bool,
    batch: int,
    big_batch: int,
    big_rows: bool = False,
) -> tuple[list[Row], dict[str, float]]:
    """Time ``calc_bpd_loop`` over all T steps; also return each variant's mean bits/dim.

    ``big_rows`` adds both code bases on ``big_batch`` images (each call then takes minutes).
    """
    make_ours, make_ref = paired_nets(ref, cfg, device)
    x_small = images(cfg, batch, device, seed=1)
    x_big = images(cfg, big_batch, device, seed=1)
    diffusion = ours_diffusion(device)
    variants = [
        v for v in inference_variants(compile_nets, big_batch) if big_rows or v.batch is None
    ]
    # The same small batch, its chain steps stacked to fill a network call of big_batch.
    per_call = max(1, big_batch // batch)
    stacked = [
        OursInference(f"ours fp32 inference_mode, {per_call} steps/call", steps_per_call=per_call),
        OursInference(
            f"ours bf16 inference_mode, {per_call} steps/call", bf16=True, steps_per_call=per_call
        ),
    ]
    if compile_nets:
        name = f"ours compile(freezing) bf16, {per_call} steps/call"
        stacked.append(OursInference(name, bf16=True, compile=True, steps_per_call=per_call))
    variants += stacked
    fns: dict[str, Callable[[], object]] = {}
    batch_of: dict[str, int] = {}
    bf16_of: dict[str, bool] = {"reference fp32": False}
    bpd: dict[str, float] = {}

    def ours_run(variant: OursInference, net: nn.Module) -> Callable[[], object]:
        x = x_big if variant.batch else x_small

        def run() -> None:
            generator = torch.Generator(device=device).manual_seed(0)
            with grad_context(variant), autocast(device, variant.bf16):
                out = diffusion.calc_bpd_loop(
                    net,
                    x,
                    clip_denoised=True,
                    generator=generator,
                    steps_per_call=variant.steps_per_call,
                )
            bpd[variant.name] = float(out["total_bpd"][:batch].mean())

        return run

    def forward_once(variant: OursInference, net: nn.Module) -> Callable[[], object]:
        x = x_big if variant.batch else x_small
        x = x.repeat(variant.steps_per_call, 1, 1, 1)  # the batch the network will see

        def run() -> None:
            t = torch.full((x.shape[0],), 500.0, device=device)
            with grad_context(variant), autocast(device, variant.bf16):
                net(x, t)

        return run

    warm: dict[str, Callable[[], object]] = {}
    if ref is not None and make_ref is not None:
        ref_net = make_ref().eval()
        ref_diffusion = reference_diffusion(ref)

        def ref_run(name: str, bf16: bool, x: torch.Tensor) -> Callable[[], object]:
            def run() -> None:
                with autocast(device, bf16):
                    out = ref_diffusion.calc_bpd_loop(ref_net, x, clip_denoised=True)
                bpd[name] = float(out["total_bpd"][:batch].float().mean())

            return run

        references = [
            ("reference fp32", False, x_small),
            ("reference + bf16 autocast", True, x_small),
        ]
        if big_rows:
            references.append((f"reference fp32, batch {big_batch}", False, x_big))
        for name, bf16, x in references:
            fns[name] = ref_run(name, bf16, x)
            batch_of[name] = x.shape[0]
            bf16_of[name] = bf16
    for variant in variants:
        net = inference_net(make_ours, variant)
        fns[variant.name] = ours_run(variant, net)
        warm[variant.name] = forward_once(variant, net)
        batch_of[variant.name] = variant.batch or batch
        bf16_of[variant.name] = variant.bf16
    fns = select(fns)
    warm = {name: fn for name, fn in warm.items() if name in fns}
    compile_seconds = warm_compiled(warm, device)  # one forward each: compiles, warms caches
    timings = time_interleaved(fns, rounds, device, warmup=0)
    forward = model_flops(make_ours(), x_small, backward=False)
    flops = {name: forward * NUM_TIMESTEPS * n / batch for name, n in batch_of.items()}
    rows = make_rows("nll", cfg, batch_of, timings, flops, bf16_of, peaks, compile_seconds)
    return rows, bpd


# ----------------------------------------------------------------------------- Lightning


def lightning_overhead(
    cfg: NetConfig, device: torch.device, rounds: int, steps: int, skip: int = 2
) -> dict[str, Any]:
    """Time a step through ``Trainer.fit`` and through a bare loop of the same module code.

    Both iterate one DataLoader of ready-made batches on the device and run
    ``DiffusionModule.training_step``, ``AdamW.step`` and the EMA hook. A step is the time
    between consecutive ends of a batch; the first ``skip`` steps of a round are left out
    (optimizer state allocation). Each round runs one fit, then the bare loop.
    """
    import lightning.pytorch as pl

    from iddpm_pl.lightning_module import DiffusionModule

    def make_module() -> DiffusionModule:
        return DiffusionModule(
            net=perturb_(build_ours(cfg), seed=1),
            diffusion=create_diffusion(
                "cosine", NUM_TIMESTEPS, variance_type="learned_range", loss_type="hybrid"
            ),
            timestep_sampler=UniformSampler(NUM_TIMESTEPS),
            optimizer=partial(torch.optim.AdamW, lr=LEARNING_RATE, weight_decay=0.0),
            ema_rate=EMA_RATE,
        ).to(device)

    batches = [
        (
            images(cfg, cfg.batch, device, seed=i),
            torch.zeros(cfg.batch, dtype=torch.int64, device=device),
        )
        for i in range(steps)
    ]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            synchronize(device)
            self.stamps.append(time.perf_counter())

    fit_module, bare_module = make_module(), make_module()
    bare_optimizer = bare_module.configure_optimizers()
    fit_steps: list[float] = []
    bare_steps: list[float] = []
    warnings.filterwarnings("ignore", message=r".*self\.log.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for _ in range(rounds):
        clock = StepClock()
        trainer = pl.Trainer(
            accelerator=device.type,
            devices=1,
            max_steps=steps,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[clock],
        )
        trainer.fit(fit_module, train_dataloaders=loader)
        fit_steps += [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)][skip:]

        stamps = []
        for index, batch in enumerate(loader):
            loss = bare_module.training_step(batch, index)
            bare_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bare_optimizer.step()
            bare_module.on_train_batch_end(None, batch, index)
            synchronize(device)
            stamps.append(time.perf_counter())
        bare_steps += [b - a for a, b in zip(stamps, stamps[1:], strict=False)][skip:]
    fit, bare = summarize(fit_steps), summarize(bare_steps)
    return {
        "config": cfg.name,
        "trainer_fit": asdict(fit),
        "bare_loop": asdict(bare),
        "overhead": fit.median / bare.median - 1.0,
    }


# ----------------------------------------------------------------------------- quality


# The training paths the quality section compares, as overrides of the default run.
QUALITY_PATHS = {
    "fp32": ["trainer.precision=32-true"],
    "bf16": ["trainer.precision=bf16-mixed"],
    # Not fused AdamW: the default run clips gradients at 1.0, and Lightning raises an error
    # when it clips those of a fused optimizer under mixed precision.
    "bf16+compile": ["trainer.precision=bf16-mixed", "module.compile_net=true"],
}


def quality_runs(
    steps: int, val_every: int, seeds: list[int], paths: list[str], workdir: Path
) -> dict[str, dict[str, Any]]:
    """Train the default digits run per path and seed; return val/bpd against the step.

    The real Hydra config and ``iddpm_pl.train.train``. Only the length, the validation
    interval, the seed and the path's overrides (``QUALITY_PATHS``) change, and the sample
    grid is dropped. Each result also gives the run's wall time in seconds.
    """
    import csv

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from iddpm_pl.train import train

    unknown = sorted(set(paths) - set(QUALITY_PATHS))
    if unknown:
        raise SystemExit(
            f"--quality-paths {unknown} are invalid; choose from {sorted(QUALITY_PATHS)}"
        )
    curves: dict[str, dict[str, Any]] = {}
    for path in paths:
        for seed in seeds:
            name = f"{path} seed {seed}"
            output_dir = workdir / f"{path}_seed{seed}".replace("+", "_")
            GlobalHydra.instance().clear()
            with initialize_config_module("iddpm_pl.conf", version_base="1.3"):
                cfg = compose(
                    "train",
                    overrides=[
                        "logger=csv",
                        f"seed={seed}",
                        *QUALITY_PATHS[path],
                        f"trainer.max_steps={steps}",
                        f"trainer.val_check_interval={val_every}",
                        "trainer.enable_progress_bar=false",
                        "trainer.enable_model_summary=false",
                        "~callbacks.sample_grid",
                        f"paths.output_dir={output_dir}",
                    ],
                )
            start = time.perf_counter()
            train(cfg)
            seconds = time.perf_counter() - start
            (metrics,) = output_dir.glob("csv/**/metrics.csv")
            with metrics.open() as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("val/bpd")]
            val_bpd = {int(r["step"]): float(r["val/bpd"]) for r in rows}
            curves[name] = {"seconds": seconds, "val_bpd": val_bpd}
            print(f"{name}: {seconds:.0f} s, val/bpd {val_bpd}", flush=True)
    GlobalHydra.instance().clear()
    return curves


# ----------------------------------------------------------------------------- CUDA checks


def count_syncs_in_step(cfg: NetConfig, device: torch.device) -> int:
    """Count host-device synchronisations in one of our training steps (CUDA sync debug mode)."""
    step = ours_train_step(
        lambda: perturb_(build_ours(cfg), seed=1).to(device),
        OursTrain("sync check", bf16=True),
        images(cfg, cfg.batch, device),
    )
    step()
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------- report


def format_rows(rows: list[Row]) -> str:
    """Format rows as a markdown table."""
    lines = [
        "| section | config | variant | images/call | median s | IQR s | images/s | "
        "GFLOP/call | MFU | x reference | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.section} | {r.config} | {r.variant} | {r.images_per_call} | "
            f"{r.timing.median:.4f} | {r.timing.q1:.4f}-{r.timing.q3:.4f} | "
            f"{r.images_per_s:.1f} | "
            + (f"{r.flops_per_call / 1e9:.2f}" if r.flops_per_call else "-")
            + " | "
            + (f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-")
            + " | "
            + (f"{r.ratio_to_reference:.2f}" if r.ratio_to_reference else "-")
            + f" | {r.note} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="folder holding improved_diffusion/ (the reference)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both code bases")
    parser.add_argument("--sections", default="peak,train,sample,nll,lightning")
    parser.add_argument("--configs", default=None, help="train configs (digits,cifar[,paper])")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds, train section")
    parser.add_argument("--inference-rounds", type=int, default=3, help="sample/nll rounds")
    parser.add_argument("--nll-batch", type=int, default=16)
    parser.add_argument(
        "--nll-big-rows",
        action="store_true",
        help="also time the NLL of --big-batch images in both code bases (minutes per call)",
    )
    parser.add_argument("--big-batch", type=int, default=256, help="larger-batch variants")
    parser.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="time torch.compile variants (auto: on CUDA only; on a CPU each costs minutes)",
    )
    parser.add_argument(
        "--variants",
        help="comma-separated substrings: time only our variants whose name contains one "
        "(the reference fp32 rows are always kept)",
    )
    parser.add_argument("--lightning-rounds", type=int, default=5)
    parser.add_argument("--lightning-steps", type=int, default=22)
    parser.add_argument("--quality-steps", type=int, default=1500)
    parser.add_argument("--quality-every", type=int, default=250)
    parser.add_argument("--quality-seeds", default="0,1")
    parser.add_argument(
        "--quality-paths",
        default="fp32,bf16+compile",
        help=f"training paths to compare, from {sorted(QUALITY_PATHS)}",
    )
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    global VARIANT_FILTER
    VARIANT_FILTER = args.variants.split(",") if args.variants else None
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    torch.set_num_threads(args.threads)
    # Every variant compiles UNet.forward again (other weights, shapes or autocast state).
    # Past Dynamo's default limit of 8 the rest would run eagerly, with only a logged warning.
    torch._dynamo.config.recompile_limit = 64
    torch.set_float32_matmul_precision("high")  # as train.py sets it
    torch.manual_seed(0)
    sections = set(args.sections.split(","))
    compile_nets = args.compile == "yes" or (args.compile == "auto" and device.type == "cuda")
    default_configs = "digits,cifar,paper" if device.type == "cuda" else "digits,cifar"
    configs = [CONFIGS[name] for name in (args.configs or default_configs).split(",")]
    needs_reference = sections & {"train", "sample", "nll"}
    if needs_reference and not args.reference:
        raise SystemExit(
            f"sections {sorted(needs_reference)} compare against the reference: pass "
            "--reference <folder holding improved_diffusion/>, or pick other --sections"
        )
    ref = load_reference(args.reference) if args.reference else None

    arguments = {**vars(args), "json": str(args.json) if args.json else None}
    results: dict[str, Any] = {"machine": machine_description(device), "args": arguments}
    print(json.dumps(results["machine"]), flush=True)
    peaks = {}
    if sections & {"peak", "train", "sample", "nll"}:
        peaks = matmul_peaks(device, rounds=10)
        results["peaks"] = peaks
        print(
            f"\nmatmul peak ({int(peaks['size'])}^2 torch.mm, best of 10): "
            f"fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s",
            flush=True,
        )
    rows: list[Row] = []
    if "train" in sections:
        for cfg in configs:
            new = bench_train(ref, cfg, device, peaks, args.rounds, compile_nets)
            rows += new
            print(f"\n{format_rows(new)}", flush=True)
    digits = CONFIGS["digits"]
    if "sample" in sections:
        new, gaps = bench_sample(
            ref, digits, device, peaks, args.inference_rounds, compile_nets, args.big_batch
        )
        rows += new
        results["sample_max_abs_gap_to_fp32"] = gaps
        print(f"\n{format_rows(new)}\nmax |sample - fp32 sample|: {gaps}", flush=True)
    if "nll" in sections:
        new, bpd = bench_nll(
            ref,
            digits,
            device,
            peaks,
            args.inference_rounds,
            compile_nets,
            args.nll_batch,
            args.big_batch,
            args.nll_big_rows,
        )
        rows += new
        results["nll_mean_bpd"] = bpd
        print(f"\n{format_rows(new)}\nmean total bits/dim: {bpd}", flush=True)
    results["rows"] = [asdict(r) for r in rows]
    if "lightning" in sections:
        overhead = lightning_overhead(digits, device, args.lightning_rounds, args.lightning_steps)
        results["lightning"] = overhead
        print(
            f"\nLightning: Trainer.fit {overhead['trainer_fit']['median'] * 1e3:.1f} ms/step, "
            f"bare loop {overhead['bare_loop']['median'] * 1e3:.1f} ms/step, overhead "
            f"{100 * overhead['overhead']:+.1f}%",
            flush=True,
        )
    if device.type == "cuda" and "train" in sections:
        results["syncs_in_training_step"] = count_syncs_in_step(configs[-1], device)
        print(f"\nhost-device syncs in one training step: {results['syncs_in_training_step']}")
    if "quality" in sections:
        with tempfile.TemporaryDirectory(prefix="iddpm_speed_quality_") as workdir:
            results["quality"] = quality_runs(
                args.quality_steps,
                args.quality_every,
                [int(s) for s in args.quality_seeds.split(",")],
                args.quality_paths.split(","),
                Path(workdir),
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
