"""Evaluate a trained run: ``python -m iddpm_pl.evaluate ckpt_path=RUN/checkpoints/last.ckpt``.

Metrics (``metrics=[nll,fid,kid,accuracy]``, see ``conf/evaluate.yaml``):

- ``nll``: the variational bound of every image of the split in bits/dim, computed by
  ``calc_bpd_loop`` with the EMA network over all T steps. A respaced chain gives a
  quicker, looser upper bound. The mean L_t of every step goes to ``vb_terms.csv``;
- ``fid`` and ``kid``: torchmetrics' FID and KID between the split and samples of the model,
  in the features of a digits classifier (digits) or of Inception-v3 (RGB data);
- ``accuracy``: the digits classifier's accuracy on samples of a class-conditional model,
  against the class each sample was conditioned on.

Results go to ``metrics.json`` in the output folder (default
``RUN/eval/<checkpoint>_<split>_<time stamp>/``) and to the configured Lightning loggers.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from iddpm_pl.builders import build_datamodule, build_loggers
from iddpm_pl.checkpoint import LoadedRun, load_run
from iddpm_pl.data import uint8_to_float
from iddpm_pl.data.base import SPLITS
from iddpm_pl.data.digits import DigitsDataModule
from iddpm_pl.inference import check_precision, compile_for_inference, network_autocast
from iddpm_pl.lightning_module import DiffusionModule
from iddpm_pl.metrics import (
    ClassifierFeatures,
    ClassifierSettings,
    DigitsClassifier,
    InceptionFeatures,
    accuracy,
    compute_fid_kid,
    find_inception_weights,
    load_digits_classifier,
)
from iddpm_pl.sample import (
    check_method,
    check_steps,
    count_steps,
    draw_samples,
    require_ckpt_path,
    sample_labels,
    save_npz,
)
from iddpm_pl.train import configure_wandb_dirs

log = logging.getLogger(__name__)

METRICS = ("nll", "fid", "kid", "accuracy")
SAMPLE_METRICS = ("fid", "kid", "accuracy")
EXTRACTORS = ("auto", "digits", "inception")


# ---------------------------------------------------------------------- option checks


def check_metrics(metrics: Any) -> list[str]:
    """Return the requested metric names in order, or raise a ValueError for unknown ones."""
    names = [metrics] if isinstance(metrics, str) else list(metrics or [])
    names = list(dict.fromkeys(str(name) for name in names))
    if not names:
        raise ValueError(f"metrics is empty; choose some of {', '.join(METRICS)}")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(map(repr, unknown))} in metrics; valid choices "
            f"are {', '.join(METRICS)}"
        )
    return names


def check_split(split: str) -> str:
    """Return ``split`` if the data modules have it, else raise a ValueError."""
    if split not in SPLITS:
        raise ValueError(f"unknown split={split!r}; valid choices are {', '.join(SPLITS)}")
    return split


def standard_error(values: torch.Tensor) -> float | None:
    """Return the standard error of the mean of ``[N]`` values (``None`` for N < 2)."""
    n = values.numel()
    if n < 2:
        return None
    return float(values.double().std(unbiased=True) / math.sqrt(n))


# ---------------------------------------------------------------------- NLL


@torch.inference_mode()
def evaluate_nll(
    module: DiffusionModule,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    use_ema: bool = True,
    clip_denoised: bool = True,
    progress: bool = True,
    steps_per_call: int | None = None,
    precision: str = "32",
    net: torch.nn.Module | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``calc_bpd_loop`` over uint8 ``[N, C, H, W]`` images in batches.

    Args:
        module: the trained module; its EMA network is evaluated when ``use_ema``.
        images: uint8 images of the split; ``labels`` int64 ``[N]`` condition a
            class-conditional model (the bound is then that of log p(x | y)).
        steps: respacing spec; ``None`` evaluates all T steps. A respaced chain gives a
            looser bound than the full one, never a lower value in expectation.
        seed: seed of the noise of q(x_t | x_0) (one generator, drawn batch after batch).
        steps_per_call: chain steps evaluated in one network call; ``None`` fills the
            network batch: ``max(1, batch_size // images in the batch)``.
        precision: ``"bf16"`` runs the network under bf16 autocast; the terms stay float32.
        net: runs in place of the EMA or raw network (a compiled copy, for example).

    Returns:
        The summary (means over images in bits/dim, their standard errors, counts) and the
        per-step table ``t``, ``original_step``, ``vb_bpd``, ``vb_bpd_stderr``,
        ``xstart_mse``, ``eps_mse`` (means over images), each ``[K]``.
    """
    diffusion = module.diffusion if steps is None else module.diffusion.respace(steps)
    if net is None:
        net = module.ema.module if use_ema else module.net
    net.eval()
    device = module.device
    num_steps = diffusion.num_timesteps
    generator = torch.Generator(device=device).manual_seed(seed)
    kwargs_for = (lambda y: {"y": y.to(device)}) if module.class_conditional else (lambda y: {})

    totals, priors = [], []
    sums = {
        name: torch.zeros(num_steps, dtype=torch.float64) for name in ("vb", "vb2", "x0", "eps")
    }
    start_time = time.perf_counter()
    n = images.shape[0]
    with tqdm(total=n, desc=f"NLL ({num_steps} steps)", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            x_start = uint8_to_float(images[start : start + batch_size]).to(device)
            per_call = steps_per_call or max(1, batch_size // x_start.shape[0])
            with network_autocast(device, precision):
                out = diffusion.calc_bpd_loop(
                    net,
                    x_start,
                    clip_denoised=clip_denoised,
                    model_kwargs=kwargs_for(labels[start : start + batch_size]),
                    generator=generator,
                    progress=progress,
                    steps_per_call=per_call,
                )
            vb = out["vb"].double().cpu()  # [B, K] bits/dim
            sums["vb"] += vb.sum(dim=0)
            sums["vb2"] += vb.pow(2).sum(dim=0)
            sums["x0"] += out["xstart_mse"].double().cpu().sum(dim=0)
            sums["eps"] += out["mse"].double().cpu().sum(dim=0)
            totals.append(out["total_bpd"].double().cpu())
            priors.append(out["prior_bpd"].double().cpu())
            bar.update(x_start.shape[0])
    seconds = time.perf_counter() - start_time

    total, prior = torch.cat(totals), torch.cat(priors)
    vb_mean = sums["vb"] / n
    vb_var = (sums["vb2"] / n - vb_mean.pow(2)).clamp(min=0.0) * (n / max(n - 1, 1))
    table = {
        "t": np.arange(num_steps),
        "original_step": diffusion.timestep_map.cpu().numpy(),
        "vb_bpd": vb_mean.numpy(),
        "vb_bpd_stderr": (vb_var / n).sqrt().numpy() if n > 1 else np.full(num_steps, np.nan),
        "xstart_mse": (sums["x0"] / n).numpy(),
        "eps_mse": (sums["eps"] / n).numpy(),
    }
    summary = {
        "bpd": float(total.mean()),
        "bpd_stderr": standard_error(total),
        "prior_bpd": float(prior.mean()),
        "prior_bpd_stderr": standard_error(prior),
        "decoder_bpd": float(vb_mean[0]),
        "num_images": n,
        "num_steps": num_steps,
        "num_timesteps": module.diffusion.num_timesteps,
        "steps": steps,
        "full_chain": num_steps == module.diffusion.num_timesteps,
        "conditional": bool(module.class_conditional),
        "use_ema": use_ema,
        "clip_denoised": clip_denoised,
        "batch_size": batch_size,
        "steps_per_call": steps_per_call,
        "precision": precision,
        "seed": seed,
        "seconds": seconds,
        "images_per_second": n / seconds if seconds > 0 else None,
    }
    return summary, table


def write_vb_terms(path: Path, table: dict[str, np.ndarray]) -> Path:
    """Write the per-step table of :func:`evaluate_nll` as CSV, one row per step."""
    columns = list(table)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in zip(*(table[c] for c in columns), strict=True):
            writer.writerow(
                [
                    int(v) if c in ("t", "original_step") else f"{v:.8g}"
                    for c, v in zip(columns, row, strict=True)
                ]
            )
    return path


# ---------------------------------------------------------------------- samples and features


def load_samples_npz(
    path: str | Path, image_shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read ``arr_0`` (uint8 ``[N, H, W, C]``) and ``arr_1`` (labels, optional) of an .npz.

    Returns the images as uint8 ``[N, C, H, W]``; raises when their shape is not the model's.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"sampling.samples_path={path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            array = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data.files else None
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(f"cannot read samples from {path}: {error}") from None
    channels, height, width = image_shape
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (height, width, channels):
        raise ValueError(
            f"{path}: arr_0 is {array.dtype} {array.shape}, expected uint8 "
            f"[N, {height}, {width}, {channels}] as written by iddpm_pl.sample"
        )
    if labels is not None and labels.shape != (array.shape[0],):
        raise ValueError(
            f"{path}: arr_1 has shape {labels.shape}, expected one label per image "
            f"({array.shape[0]},)"
        )
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return images, None if labels is None else torch.from_numpy(labels.astype(np.int64))


def digits_classifier_settings(cfg: DictConfig, run_cfg: DictConfig) -> ClassifierSettings:
    """Classifier settings from ``features.classifier``, with the run's digits split."""
    data = run_cfg.data
    return ClassifierSettings(
        **OmegaConf.to_container(cfg.features.classifier, resolve=True),  # type: ignore[arg-type]
        split_seed=int(data.get("seed", 0)),
        val_fraction=float(data.get("val_fraction", 0.1)),
        test_fraction=float(data.get("test_fraction", 0.1)),
    )


def choose_extractor(cfg: DictConfig, datamodule: Any) -> str:
    """Return ``digits`` or ``inception`` for ``features.extractor`` (``auto`` picks by data)."""
    extractor = str(cfg.features.extractor)
    if extractor not in EXTRACTORS:
        raise ValueError(
            f"unknown features.extractor={extractor!r}; valid choices are {', '.join(EXTRACTORS)}"
        )
    is_digits = isinstance(datamodule, DigitsDataModule)
    if extractor == "auto":
        return "digits" if is_digits else "inception"
    if extractor == "digits" and not is_digits:
        raise ValueError(
            "features.extractor=digits needs the digits data; this run trains on "
            f"{type(datamodule).__name__}. Use features.extractor=inception"
        )
    return extractor


def prepare_features(
    cfg: DictConfig, run: LoadedRun, datamodule: Any, metrics: list[str]
) -> tuple[torch.nn.Module, DigitsClassifier | None, dict[str, Any]]:
    """Check the sample metrics against the run and build the feature extractor.

    Runs before any evaluation, so a missing Inception file or an unconditional model fails
    at start. Returns the feature module, the digits classifier (``None`` for Inception) and
    a description for ``metrics.json``.
    """
    extractor = choose_extractor(cfg, datamodule)
    if "accuracy" in metrics:
        if not run.module.class_conditional:
            raise ValueError(
                "metric accuracy needs a class-conditional model (model.num_classes set in "
                "training); this run is unconditional"
            )
        if extractor != "digits":
            raise ValueError("metric accuracy uses the digits classifier: digits data only")
    if extractor == "inception":
        weights = find_inception_weights(cfg.features.get("inception_weights_path"))
        return (
            InceptionFeatures(weights),
            None,
            {"extractor": "inception-v3", "weights": str(weights)},
        )
    classifier, info = load_digits_classifier(digits_classifier_settings(cfg, run.cfg))
    return ClassifierFeatures(classifier), classifier, {"extractor": "digits_classifier", **info}


def get_samples(
    cfg: DictConfig, run: LoadedRun, num_reference: int, output_dir: Path
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Read ``sampling.samples_path`` or draw samples (saved to ``output_dir``).

    Returns uint8 ``[N, C, H, W]`` samples, their labels (``None`` when unconditional) and
    a description for ``metrics.json``.
    """
    module, sampling = run.module, cfg.sampling
    if sampling.get("samples_path"):
        samples, labels = load_samples_npz(sampling.samples_path, module.image_shape)
        return samples, labels, {"source": str(sampling.samples_path), "num_samples": len(samples)}

    num_timesteps = module.diffusion.num_timesteps
    steps = check_steps(sampling.steps, num_timesteps)
    num_samples = int(sampling.num_samples or num_reference)
    batch_size = int(sampling.batch_size or cfg.batch_size)
    labels = sample_labels(run, num_samples, str(sampling.labels), int(cfg.seed))
    start = time.perf_counter()
    samples = draw_samples(
        module,
        num_samples,
        batch_size,
        steps,
        str(sampling.method),
        float(sampling.eta),
        int(cfg.seed),
        bool(cfg.use_ema),
        labels,
        bool(cfg.progress),
        precision=str(cfg.get("precision", "32")),
        net=run.inference_net,
    )
    seconds = time.perf_counter() - start
    npz_path = save_npz(output_dir, samples, labels)
    info = {
        "source": npz_path.name,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "method": str(sampling.method),
        "steps": steps,
        "num_steps": count_steps(steps, num_timesteps),
        "eta": float(sampling.eta),
        "seed": int(cfg.seed),
        "use_ema": bool(cfg.use_ema),
        "seconds": seconds,
    }
    return samples, labels, info


def sample_quality(
    cfg: DictConfig,
    run: LoadedRun,
    reference: torch.Tensor,
    metrics: list[str],
    features: tuple[torch.nn.Module, DigitsClassifier | None, dict[str, Any]],
    output_dir: Path,
) -> dict[str, Any]:
    """Compute the requested FID, KID and accuracy of the model's samples against ``reference``."""
    feature, classifier, feature_info = features
    samples, labels, sample_info = get_samples(cfg, run, reference.shape[0], output_dir)
    results: dict[str, Any] = {"samples": sample_info, "features": feature_info}
    fid_kid = [name for name in metrics if name in ("fid", "kid")]
    if fid_kid:
        results.update(
            compute_fid_kid(
                reference,
                samples,
                feature,
                fid_kid,
                batch_size=int(cfg.batch_size),
                kid_subset_size=int(cfg.kid.subset_size),
                kid_subsets=int(cfg.kid.subsets),
                seed=int(cfg.seed),
                device=run.module.device,
            )
        )
    if "accuracy" in metrics:
        if labels is None:
            raise ValueError(
                f"metric accuracy needs the labels of the samples: {cfg.sampling.samples_path} "
                "has no arr_1"
            )
        assert classifier is not None  # prepare_features guarantees the digits classifier
        results["accuracy"] = {
            "value": accuracy(
                classifier.to(run.module.device), samples.to(run.module.device), labels
            ),
            "num_samples": int(samples.shape[0]),
        }
    return results


# ---------------------------------------------------------------------- outputs


def check_steps_per_call(value: Any) -> int | None:
    """Return ``nll.steps_per_call`` as an int of at least 1, or ``None`` (fill the batch)."""
    if value is None:
        return None
    if int(value) < 1:
        raise ValueError(
            f"nll.steps_per_call={value} is invalid; use 1 or more, or null to fill the "
            "network batch"
        )
    return int(value)


def default_output_dir(run_dir: Path, ckpt_path: Path, split: str) -> Path:
    """Create and return ``RUN/eval/<checkpoint name>_<split>_<time stamp>``.

    Evaluations started in the same second (two metrics run side by side) get ``-1``,
    ``-2``... appended, so none overwrites the other's ``metrics.json``.
    """
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = run_dir / "eval" / f"{ckpt_path.stem}_{split}_{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        path = base if attempt == 0 else base.with_name(f"{base.name}-{attempt}")
        try:
            path.mkdir()  # atomic: exactly one process creates each name
        except FileExistsError:
            continue
        return path
    raise FileExistsError(
        f"{base} and its 999 numbered variants already exist; pass output_dir=<new folder>"
    )


def scalar_metrics(results: dict[str, Any], split: str) -> dict[str, float]:
    """Flatten the scores of ``results`` to ``{"eval/<split>/<name>": value}`` for loggers."""
    prefix = f"eval/{split}"
    picks = {
        ("nll", "bpd"): "bpd",
        ("nll", "prior_bpd"): "prior_bpd",
        ("fid", "value"): "fid",
        ("kid", "mean"): "kid",
        ("kid", "std"): "kid_std",
        ("accuracy", "value"): "accuracy",
    }
    scalars = {}
    for (section, key), name in picks.items():
        value = results.get(section, {}).get(key)
        if value is not None:
            scalars[f"{prefix}/{name}"] = float(value)
    return scalars


def config_record(cfg: DictConfig) -> dict[str, Any]:
    """Return the evaluation config for ``metrics.json``, resolved except ``logger``.

    The logger configs are shared with training and refer to keys of the training config
    (``paths.output_dir``, ``diffusion.*``), so they are kept as written.
    """
    record = {
        str(key): OmegaConf.to_container(value, resolve=True)
        if isinstance(value, DictConfig | ListConfig)
        else value
        for key, value in cfg.items()
        if key != "logger"
    }
    record["logger"] = (
        OmegaConf.to_container(cfg.logger, resolve=False) if cfg.get("logger") else None
    )
    return record


def log_to_loggers(cfg: DictConfig, run: LoadedRun, output_dir: Path, results: dict) -> None:
    """Send the evaluation config and the scalar scores to the loggers of ``cfg.logger``.

    The logger configs are the training ones (``logger=csv``, ``tensorboard``, ``wandb``).
    Their interpolations resolve against the run's diffusion settings, ``task_name:
    evaluate`` and this output folder, so their files go to the output folder. Nothing
    happens for ``logger=none`` (the default).
    """
    specs = cfg.get("logger")
    if not specs:
        return
    logging_cfg = OmegaConf.create(
        {
            "task_name": "evaluate",
            "paths": {"output_dir": str(output_dir)},
            "diffusion": OmegaConf.to_container(run.cfg.diffusion, resolve=True),
            "logger": OmegaConf.to_container(specs, resolve=False),
        }
    )
    if "wandb" in specs:
        configure_wandb_dirs(output_dir)
    step = run.global_step or 0
    for logger in build_loggers(logging_cfg):
        logger.log_hyperparams(results["config"])
        logger.log_metrics(scalar_metrics(results, str(cfg.split)), step=step)
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


# ---------------------------------------------------------------------- entry point


def nll_section(
    cfg: DictConfig,
    run: LoadedRun,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: str | None,
    output_dir: Path,
) -> dict[str, Any]:
    """Evaluate the NLL of the first ``nll.max_images`` images; write ``vb_terms.csv``."""
    max_images = cfg.nll.get("max_images")
    count = images.shape[0] if max_images is None else min(int(max_images), images.shape[0])
    if count < 1:
        raise ValueError(f"nll.max_images={max_images} leaves no image to evaluate; use 1 or more")
    steps_per_call = check_steps_per_call(cfg.nll.get("steps_per_call"))
    summary, table = evaluate_nll(
        run.module,
        images[:count],
        labels[:count],
        steps=steps,
        batch_size=int(cfg.nll.batch_size or cfg.batch_size),
        seed=int(cfg.seed),
        use_ema=bool(cfg.use_ema),
        clip_denoised=bool(cfg.nll.clip_denoised),
        progress=bool(cfg.progress),
        steps_per_call=steps_per_call,
        precision=str(cfg.get("precision", "32")),
        net=run.inference_net,
    )
    terms_path = write_vb_terms(output_dir / "vb_terms.csv", table)
    log.info(
        "NLL on %s (%d images, %d steps): %.4f +- %.4f bits/dim (prior %.2e)",
        cfg.split,
        count,
        summary["num_steps"],
        summary["bpd"],
        summary["bpd_stderr"] or 0.0,
        summary["prior_bpd"],
    )
    return {**summary, "max_images": max_images, "terms_file": terms_path.name}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the checkpoint ``cfg.ckpt_path`` on ``cfg.split``.

    Every option is checked, and the feature extractor built, before the first network call.

    Returns:
        ``metrics`` (the content of ``metrics.json``), ``output_dir`` and ``metrics_path``.
    """
    metrics = check_metrics(cfg.metrics)
    split = check_split(str(cfg.split))
    precision = check_precision(cfg.get("precision", "32"))
    check_steps_per_call(cfg.nll.get("steps_per_call"))  # before the checkpoint loads
    ckpt_path = require_ckpt_path(cfg)
    wants_samples = any(name in SAMPLE_METRICS for name in metrics)
    draws_samples = wants_samples and not cfg.sampling.get("samples_path")
    if draws_samples:
        check_method(str(cfg.sampling.method))
    run = load_run(ckpt_path, cfg.get("run_dir"), list(cfg.get("run_overrides") or []), cfg.device)
    if cfg.get("compile", False):
        run.inference_net = compile_for_inference(run.network(bool(cfg.use_ema)))
    num_timesteps = run.module.diffusion.num_timesteps
    nll_steps = check_steps(cfg.nll.steps, num_timesteps, "nll.steps")
    if draws_samples:
        check_steps(cfg.sampling.steps, num_timesteps)

    try:
        datamodule = build_datamodule(run.cfg)
        datamodule.setup()
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"cannot load the data of {run.run_dir}: {error}") from None
    images, labels = datamodule.uint8_images(split), datamodule.labels(split)
    features = prepare_features(cfg, run, datamodule, metrics) if wants_samples else None

    output_dir = (
        Path(cfg.output_dir)
        if cfg.get("output_dir")
        else default_output_dir(run.run_dir, run.ckpt_path, split)
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "checkpoint": str(run.ckpt_path),
        "run_dir": str(run.run_dir),
        "global_step": run.global_step,
        "split": split,
        "split_size": int(images.shape[0]),
        "seed": int(cfg.seed),
        "use_ema": bool(cfg.use_ema),
        "precision": precision,
        "compile": bool(cfg.get("compile", False)),
        "device": str(run.module.device),
        "date": datetime.now().isoformat(timespec="seconds"),
    }
    if "nll" in metrics:
        results["nll"] = nll_section(cfg, run, images, labels, nll_steps, output_dir)
    if features is not None:
        results.update(sample_quality(cfg, run, images, metrics, features, output_dir))
        for name in ("fid", "kid", "accuracy"):
            if name in results:
                log.info("%s: %s", name, results[name])

    results["config"] = config_record(cfg)
    metrics_path = output_dir / "metrics.json"
    metrics_path.write_text(json.dumps(results, indent=2) + "\n")
    log_to_loggers(cfg, run, output_dir, results)
    log.info("metrics: %s", metrics_path)
    return {"metrics": results, "output_dir": output_dir, "metrics_path": metrics_path}


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: print a failure as one line and exit with status 1."""
    torch.set_float32_matmul_precision("high")
    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
