"""Sample from a trained run: ``python -m iddpm_pl.sample ckpt_path=RUN/checkpoints/last.ckpt``.

The model, diffusion and image settings come from the run's saved config; the command line
sets only the sampling (``conf/sample.yaml``). Writes, by default under
``RUN/samples_cli/<method>_<steps>_seed<seed>/``:

- ``samples_<N>x<H>x<W>x<C>.npz``: ``arr_0`` uint8 ``[N, H, W, C]`` (the layout FID
  evaluators read) and, for a class-conditional model, ``arr_1`` int64 ``[N]`` labels;
- ``grid.png``: the first ``grid.max_images`` samples;
- ``sample_info.json``: the settings, the checkpoint and the throughput.

``main`` is the thin ``@hydra.main`` shell; :func:`sample` takes a composed config.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from iddpm_pl.checkpoint import LoadedRun, load_run
from iddpm_pl.diffusion import space_timesteps
from iddpm_pl.inference import check_precision, compile_for_inference, network_autocast
from iddpm_pl.lightning_module import DiffusionModule
from iddpm_pl.utils.images import make_grid, save_png, to_uint8

log = logging.getLogger(__name__)

METHODS = ("ancestral", "ddim")
LABEL_MODES = ("cycle", "random")
# Grid images are enlarged to at least this many pixels per side (8x8 digits are tiny).
GRID_MIN_PIXELS = 32


def check_steps(steps: Any, num_timesteps: int, name: str = "sampling.steps") -> str | None:
    """Return ``steps`` as a respacing spec for ``GaussianDiffusion.respace`` (``None``: all T).

    Accepts a step count in ``[1, T]``, a spec of :func:`space_timesteps` (``"ddim50"``,
    ``"10,15,20"``) or a list of section counts; raises a ValueError naming ``name`` otherwise.
    """
    if steps is None:
        return None
    if isinstance(steps, Sequence | ListConfig) and not isinstance(steps, str):
        steps = ",".join(str(count) for count in steps)  # section counts such as [10, 15, 20]
    if isinstance(steps, bool) or not isinstance(steps, int | str):
        raise ValueError(f"{name}={steps!r} must be a step count, a respacing spec or null")
    text = str(steps).strip()
    if text.lstrip("-").isdigit():
        count = int(text)
        if count < 1:
            raise ValueError(f"{name}={count} is below 1; use 1 to T={num_timesteps}, or null")
        if count > num_timesteps:
            raise ValueError(
                f"{name}={count} is above T={num_timesteps} of this run; use at most "
                f"{num_timesteps}, or null for the full chain"
            )
    try:
        space_timesteps(num_timesteps, text)
    except ValueError as error:
        raise ValueError(f"{name}={steps!r}: {error}") from None
    return text


def count_steps(steps: str | None, num_timesteps: int) -> int:
    """Return how many steps the chain respaced by ``steps`` keeps (T for ``None``)."""
    return num_timesteps if steps is None else len(space_timesteps(num_timesteps, steps))


def check_method(method: str) -> str:
    """Return ``method`` if it is a known sampler, else raise a ValueError listing them."""
    if method not in METHODS:
        raise ValueError(
            f"unknown sampling.method={method!r}; valid choices are {', '.join(METHODS)}"
        )
    return method


def class_labels(num_samples: int, num_classes: int, mode: str, seed: int) -> torch.Tensor:
    """Return int64 ``[N]`` labels: ``cycle`` gives 0, 1, ..., K-1, 0, ...; ``random`` draws
    them uniformly with a generator seeded by ``seed``."""
    if mode == "cycle":
        return torch.arange(num_samples) % num_classes
    if mode == "random":
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(num_classes, (num_samples,), generator=generator)
    raise ValueError(f"unknown labels={mode!r}; valid choices are {', '.join(LABEL_MODES)}")


def batch_seed(seed: int, index: int) -> int:
    """Seed of batch ``index``: batches of one run, and of nearby seeds, draw unrelated noise."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def draw_samples(
    module: DiffusionModule,
    num_samples: int,
    batch_size: int,
    steps: str | None = None,
    method: str = "ancestral",
    eta: float = 0.0,
    seed: int = 0,
    use_ema: bool = True,
    labels: torch.Tensor | None = None,
    progress: bool = True,
    precision: str = "32",
    net: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Draw ``num_samples`` images in batches; returns uint8 ``[N, C, H, W]`` on the CPU.

    Batch ``i`` is drawn with its own seed from ``(seed, i)``, so the same seed and
    ``batch_size`` give the same images. ``labels`` (int64 ``[N]``) condition a
    class-conditional model. ``precision`` ``"bf16"`` runs the network under bf16
    autocast, and ``net`` replaces the EMA or raw network (a compiled copy, for example).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_method(method)
    chunks = []
    num_batches = math.ceil(num_samples / batch_size)
    bar = tqdm(total=num_samples, desc=f"{method} samples", unit="img", disable=not progress)
    with bar:
        for index in range(num_batches):
            start = index * batch_size
            count = min(batch_size, num_samples - start)
            batch_labels = None if labels is None else labels[start : start + count]
            with network_autocast(module.device, precision):
                images = module.sample(
                    count,
                    steps=steps,
                    method=method,  # type: ignore[arg-type]
                    eta=eta,
                    labels=batch_labels,
                    seed=batch_seed(seed, index),
                    use_ema=use_ema,
                    progress=progress and num_batches == 1,
                    net=net,
                )
            # Converted to the 8-bit grid once, here; everything downstream reads uint8.
            chunks.append(to_uint8(images).cpu())
            bar.update(count)
    return torch.cat(chunks)


def default_output_dir(
    run_dir: Path,
    method: str,
    steps: str | None,
    num_timesteps: int,
    seed: int,
    eta: float,
    use_ema: bool,
) -> Path:
    """``RUN/samples_cli/<method>_<steps>_seed<seed>`` (eta and raw weights added when used)."""
    step_name = str(num_timesteps) if steps is None else steps.replace(",", "-")
    name = f"{method}_{step_name}"
    if method == "ddim" and eta != 0:
        name += f"_eta{eta:g}"
    name += f"_seed{seed}"
    if not use_ema:
        name += "_noema"
    return run_dir / "samples_cli" / name


def save_npz(output_dir: Path, images: torch.Tensor, labels: torch.Tensor | None) -> Path:
    """Save uint8 ``[N, C, H, W]`` images as ``arr_0`` ``[N, H, W, C]`` (and labels as ``arr_1``)."""
    array = images.permute(0, 2, 3, 1).contiguous().numpy()
    n, h, w, c = array.shape
    path = output_dir / f"samples_{n}x{h}x{w}x{c}.npz"
    output_dir.mkdir(parents=True, exist_ok=True)
    if labels is None:
        np.savez(path, arr_0=array)
    else:
        np.savez(path, arr_0=array, arr_1=labels.numpy().astype(np.int64))
    return path


def sample_labels(run: LoadedRun, num_samples: int, mode: str, seed: int) -> torch.Tensor | None:
    """Labels for a class-conditional run (``None`` for an unconditional one)."""
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown labels={mode!r}; valid choices are {', '.join(LABEL_MODES)}")
    if not run.module.class_conditional:
        return None
    return class_labels(num_samples, int(run.module.net.num_classes), mode, seed)


def require_ckpt_path(cfg: DictConfig) -> str:
    """Return ``cfg.ckpt_path``, or raise a ValueError saying how to pass it."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ValueError("ckpt_path is required: pass ckpt_path=RUN/checkpoints/last.ckpt")
    return str(cfg.ckpt_path)


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Sample from the checkpoint ``cfg.ckpt_path``; return the output paths and arrays.

    Returns:
        ``output_dir``, ``npz_path``, ``grid_path``, ``info_path``, ``images`` (uint8
        ``[N, H, W, C]`` numpy) and ``labels`` (int64 ``[N]`` numpy, or ``None``).
    """
    check_method(str(cfg.sampling.method))
    precision = check_precision(cfg.get("precision", "32"))
    ckpt_path = require_ckpt_path(cfg)
    run = load_run(ckpt_path, cfg.get("run_dir"), list(cfg.get("run_overrides") or []), cfg.device)
    num_timesteps = run.module.diffusion.num_timesteps
    steps = check_steps(cfg.sampling.steps, num_timesteps)
    method, eta, seed = str(cfg.sampling.method), float(cfg.sampling.eta), int(cfg.seed)
    num_samples = int(cfg.num_samples)
    batch_size = int(cfg.batch_size or num_samples)
    labels = sample_labels(run, num_samples, str(cfg.labels), seed)
    output_dir = (
        Path(cfg.output_dir)
        if cfg.get("output_dir")
        else default_output_dir(
            run.run_dir, method, steps, num_timesteps, seed, eta, bool(cfg.use_ema)
        )
    )
    num_steps = count_steps(steps, num_timesteps)
    log.info(
        "sampling %d images, %s with %d of T=%d steps, seed %d, %s weights",
        num_samples,
        method,
        num_steps,
        num_timesteps,
        seed,
        "EMA" if cfg.use_ema else "raw",
    )

    if cfg.get("compile", False):
        run.inference_net = compile_for_inference(run.network(bool(cfg.use_ema)))
    start = time.perf_counter()
    images = draw_samples(
        run.module,
        num_samples,
        batch_size,
        steps,
        method,
        eta,
        seed,
        bool(cfg.use_ema),
        labels,
        bool(cfg.progress),
        precision=precision,
        net=run.inference_net,
    )
    seconds = time.perf_counter() - start

    npz_path = save_npz(output_dir, images, labels)
    shown = images[: int(cfg.grid.max_images)]
    upscale = cfg.grid.upscale or max(1, math.ceil(GRID_MIN_PIXELS / images.shape[-1]))
    grid_path = save_png(make_grid(shown), output_dir / "grid.png", int(upscale))
    info = {
        "checkpoint": str(run.ckpt_path),
        "run_dir": str(run.run_dir),
        "global_step": run.global_step,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "method": method,
        "steps": steps,
        "num_steps": num_steps,
        "num_timesteps": num_timesteps,
        "eta": eta,
        "seed": seed,
        "use_ema": bool(cfg.use_ema),
        "precision": precision,
        "compile": bool(cfg.get("compile", False)),
        "labels": str(cfg.labels) if labels is not None else None,
        "device": str(run.module.device),
        "seconds": seconds,
        "images_per_second": num_samples / seconds if seconds > 0 else None,
        "npz": npz_path.name,
        "grid": grid_path.name,
    }
    info_path = output_dir / "sample_info.json"
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log.info("%d samples in %.1f s (%.2f images/s)", num_samples, seconds, num_samples / seconds)
    log.info("samples: %s", npz_path)
    log.info("grid: %s", grid_path)
    return {
        "output_dir": output_dir,
        "npz_path": npz_path,
        "grid_path": grid_path,
        "info_path": info_path,
        "images": images.permute(0, 2, 3, 1).numpy(),
        "labels": None if labels is None else labels.numpy(),
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: print a failure as one line and exit with status 1."""
    torch.set_float32_matmul_precision("high")
    try:
        sample(cfg)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
