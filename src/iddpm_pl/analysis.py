"""Helpers behind the notebooks in ``notebooks/``: every computation a notebook shows lives here.

Grouped by notebook:

- runs and checkpoints (all): :func:`compose_config`, :func:`train_or_reuse`,
  :func:`load_module`, :func:`split_images`;
- 01 noise schedules: :func:`schedule_curves`, :func:`first_index_at_least`,
  :func:`noise_at_fractions`, :func:`sample_photo`;
- 02 VLB terms: :func:`cumulative_share`, :func:`leading_share`;
- 03 importance sampling: :func:`vlb_terms`, :func:`trace_importance_sampler`,
  :func:`estimator_stats`, :func:`vlb_gradient_stats`;
- 04 fast sampling: :func:`with_variance_type`, :class:`MeanChannels`,
  :func:`fixed_variance_model`, :func:`draw_samples`, :class:`RandomConvFeatures`,
  :func:`frechet_distance`.

Conventions are the package's: images ``[N, C, H, W]`` in [-1, 1] (or uint8 where named),
``t`` int64 ``[N]`` chain indices, VLB terms in bits per dimension.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from iddpm_pl.diffusion import (
    GaussianDiffusion,
    LossSecondMomentResampler,
    TimestepSampler,
    VarianceType,
    get_named_beta_schedule,
    parse_option,
)

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "conf"

# A UNet of about 48k parameters (digits config): a training step of batch 64 took about 75 ms
# on one CPU core, so a notebook can train its own model when no checkpoint is given. T and
# the step count are left to the caller.
TINY_OVERRIDES: tuple[str, ...] = (
    "model.model_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[4]",
    "model.num_groups=4",
    "model.num_heads=2",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.limit_val_batches=1",
    "callbacks.sample_grid.every_n_steps=0",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.steps=5",
)

# ---------------------------------------------------------------------- runs and checkpoints


def compose_config(overrides: Sequence[str], output_dir: str | Path) -> DictConfig:
    """Compose the package's ``train`` config with Hydra overrides, writing to ``output_dir``.

    The result can go straight to :func:`iddpm_pl.train.train`; ``paths.output_dir`` (normally
    Hydra's run directory) is set to ``output_dir``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(output_dir).resolve())
    return cfg


def train_or_reuse(
    checkpoint: str | Path, overrides: Sequence[str], output_dir: str | Path
) -> Path:
    """Return ``checkpoint`` if that file exists; otherwise train a run and return its last one.

    Args:
        checkpoint: a ``.ckpt`` path, or ``""`` to train.
        overrides: Hydra overrides of the run trained when there is no checkpoint.
        output_dir: the run writes its config and checkpoints to a new time-stamped folder
            inside it, so a second run never mixes its files with the first.
    """
    from iddpm_pl.train import train

    if checkpoint and Path(checkpoint).is_file():
        return Path(checkpoint)
    if checkpoint:
        log.warning("checkpoint %s does not exist: training a short run instead", checkpoint)
    run_dir = _fresh_dir(Path(output_dir))
    result = train(compose_config(overrides, run_dir))
    if not result["last_checkpoint"]:
        raise RuntimeError(
            f"the run in {run_dir} saved no last checkpoint; keep callbacks.model_checkpoint "
            "with save_last: true in its config"
        )
    return Path(result["last_checkpoint"])


def _fresh_dir(parent: Path) -> Path:
    """Return ``parent/<time stamp>``, with a numeric suffix if that folder already exists."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    candidate, suffix = parent / stamp, 1
    while candidate.exists():
        candidate, suffix = parent / f"{stamp}_{suffix}", suffix + 1
    return candidate


def run_config(checkpoint: str | Path) -> DictConfig:
    """Return the config of the run that wrote ``checkpoint`` (``<run>/checkpoints/*.ckpt``).

    A command-line run keeps it in ``<run>/.hydra/config.yaml``; a run started from Python
    (:func:`iddpm_pl.train.train`) in ``<run>/config_tree.yaml``.
    """
    run_dir = Path(checkpoint).resolve().parent.parent
    for candidate in (run_dir / ".hydra" / "config.yaml", run_dir / "config_tree.yaml"):
        if candidate.is_file():
            return OmegaConf.load(candidate)  # type: ignore[return-value]
    raise FileNotFoundError(
        f"no run config next to {checkpoint}: expected {run_dir}/.hydra/config.yaml or "
        f"{run_dir}/config_tree.yaml (a checkpoint must stay inside its run's checkpoints/)"
    )


def load_module(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild a run's :class:`~iddpm_pl.lightning_module.DiffusionModule` and load its weights.

    Returns the module in eval mode; ``module.ema.module`` is the EMA network, and
    ``module.timestep_sampler`` contains the sampler state saved with the checkpoint (the
    importance sampler's loss history), when there is one.
    """
    from iddpm_pl.builders import build_module
    from iddpm_pl.callbacks.importance_sampler import CHECKPOINT_KEY

    module = build_module(run_config(checkpoint))
    state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    module.load_state_dict(state["state_dict"])
    if CHECKPOINT_KEY in state:
        module.timestep_sampler.load_state_dict(state[CHECKPOINT_KEY])
    return module.eval()


def split_images(cfg: DictConfig, split: str, num_images: int | None = None) -> torch.Tensor:
    """Return the first ``num_images`` images of a data split as uint8 ``[N, C, H, W]``."""
    from iddpm_pl.builders import build_datamodule

    datamodule = build_datamodule(cfg)
    images = datamodule.uint8_images(split)
    return images if num_images is None else images[:num_images]


def uint8_to_model(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 ``[N, C, H, W]`` to float32 in [-1, 1] on the 8-bit grid (``u8 / 127.5 - 1``)."""
    return images.float() / 127.5 - 1.0


# ---------------------------------------------------------------------- 01 noise schedules


def schedule_curves(schedule: str, num_timesteps: int) -> dict[str, torch.Tensor]:
    """Return the per-step quantities of a named schedule, each float32 ``[T]``.

    Keys: ``tau`` = (t + 1) / T (chain index t is diffusion step t + 1),
    ``betas``, ``alphas_cumprod``, ``posterior_variance`` (beta_tilde, 0 at the first step)
    and ``variance_ratio`` = beta_tilde / beta, the range a learned-range variance spans.
    """
    diffusion = GaussianDiffusion(get_named_beta_schedule(schedule, num_timesteps))  # type: ignore[arg-type]
    steps = torch.arange(1, num_timesteps + 1, dtype=torch.float32)
    return {
        "tau": steps / num_timesteps,
        "betas": diffusion.betas.clone(),
        "alphas_cumprod": diffusion.alphas_cumprod.clone(),
        "posterior_variance": diffusion.posterior_variance.clone(),
        "variance_ratio": diffusion.posterior_variance / diffusion.betas,
    }


def first_index_at_least(values: torch.Tensor, level: float) -> int:
    """Return the first index of ``values`` ``[T]`` that is at least ``level``, or -1 if none."""
    hits = (values >= level).nonzero().flatten()
    return int(hits[0]) if hits.numel() else -1


def noise_at_fractions(
    diffusion: GaussianDiffusion,
    x_start: torch.Tensor,
    fractions: Sequence[float],
    seed: int = 0,
) -> torch.Tensor:
    """Draw x_t for ``t = round(f * (T - 1))`` at each fraction f, with one shared noise.

    Args:
        x_start: ``[N, C, H, W]`` images in [-1, 1].
        fractions: points of the chain in [0, 1].
        seed: seed of the noise; equal seeds give equal noise for every diffusion, so two
            schedules can be compared on the same draw.

    Returns:
        ``[F, N, C, H, W]``, one noised batch per fraction.
    """
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"fractions must lie in [0, 1], got {bad}")
    noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(seed))
    last = diffusion.num_timesteps - 1
    batches = []
    for fraction in fractions:
        t = torch.full((x_start.shape[0],), round(fraction * last), dtype=torch.int64)
        batches.append(diffusion.q_sample(x_start, t, noise))
    return torch.stack(batches)


def sample_photo(size: int, name: str = "grace_hopper.jpg") -> torch.Tensor:
    """Return a natural image shipped with matplotlib, centre-cropped and resized.

    Returns uint8 ``[1, 3, size, size]``.
    """
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    with Image.open(cbook.get_sample_data(name, asfileobj=False)) as image:
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.BICUBIC)
        array = np.asarray(image, dtype=np.uint8).copy()  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


# ---------------------------------------------------------------------- 02 VLB terms


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


# ---------------------------------------------------------------------- 03 importance sampling


def vlb_terms(
    diffusion: GaussianDiffusion,
    model: Callable[..., torch.Tensor],
    x_start: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Return L_t in bits/dim ``[N]`` with gradients into every output channel.

    Unlike the hybrid loss, nothing is detached: this is the term the L_vlb objective
    differentiates, whatever loss type ``diffusion`` was trained with.
    """
    x_t = diffusion.q_sample(x_start, t, noise)
    output = diffusion.call_model(model, x_t, t, model_kwargs).float()
    terms, _ = diffusion.vb_terms_bpd(output, x_start, x_t, t)
    return terms


@dataclass
class SamplerSnapshot:
    """The state of a timestep sampler after ``batches`` updates."""

    batches: int
    warmup_fraction: float
    weights: torch.Tensor  # float64 [T], p_t


@torch.no_grad()
def trace_importance_sampler(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    images: torch.Tensor,
    sampler: LossSecondMomentResampler,
    num_batches: int,
    batch_size: int,
    snapshot_every: int,
    seed: int = 0,
) -> list[SamplerSnapshot]:
    """Feed a loss-second-moment sampler the L_t of a fixed model, as training would.

    Each batch draws images, t from the sampler's current p_t and noise, computes L_t, and
    calls ``sampler.update``. The model is not trained (and runs without dropout), so the
    trace isolates how p_t moves from uniform (warm-up) to its learned shape.

    Args:
        images: ``[M, C, H, W]`` float images in [-1, 1] to draw batches from.
        sampler: updated in place.
        snapshot_every: record a snapshot every this many batches (and at 0 and the end).

    Returns:
        The snapshots, in order.
    """
    if num_batches < 1 or batch_size < 1 or snapshot_every < 1:
        raise ValueError(
            f"num_batches, batch_size and snapshot_every must be positive, got "
            f"{num_batches}, {batch_size}, {snapshot_every}"
        )
    generator = torch.Generator().manual_seed(seed)
    snapshots = [SamplerSnapshot(0, sampler.warmup_fraction, sampler.weights())]
    was_training = model.training
    model.eval()
    try:
        for batch in range(1, num_batches + 1):
            index = torch.randint(images.shape[0], (batch_size,), generator=generator)
            x_start = images[index]
            t, _ = sampler.sample(batch_size, generator=generator)
            noise = torch.randn(x_start.shape, generator=generator)
            sampler.update(t, vlb_terms(diffusion, model, x_start, t, noise))
            if batch % snapshot_every == 0 or batch == num_batches:
                snapshot = SamplerSnapshot(batch, sampler.warmup_fraction, sampler.weights())
                snapshots.append(snapshot)
    finally:
        model.train(was_training)
    return snapshots


@dataclass
class EstimatorStats:
    """Spread of a stochastic loss estimate and of its gradient over repeated draws.

    ``grad_trace_covariance`` is the trace of the gradient covariance, the sum over every
    parameter entry of its variance: the mean squared distance of one draw's gradient from
    the mean gradient. Variances are unbiased (divided by ``num_draws - 1``).
    """

    num_draws: int
    loss_mean: float
    loss_variance: float
    grad_trace_covariance: float
    grad_mean_sq_norm: float  # ||E[g]||^2, the signal the noise is measured against


def estimator_stats(
    estimate: Callable[[int], torch.Tensor],
    params: Sequence[torch.Tensor],
    num_draws: int,
) -> EstimatorStats:
    """Measure the mean and variance of a scalar estimate and of its gradient.

    Args:
        estimate: ``estimate(k)`` returns draw k of the scalar estimate, a function of
            ``params`` (it draws its own randomness).
        params: the tensors to differentiate by; ``.grad`` is left untouched.
        num_draws: number of draws, at least 2.

    Sums are kept in float64 relative to the first draw (a shifted-data variance), so the
    covariance of a small noise on a large gradient does not cancel out.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be at least 2 to measure a variance, got {num_draws}")
    params = list(params)
    first_loss, first = _loss_and_gradient(estimate(0), params)
    losses = [first_loss]
    shift_sum = torch.zeros_like(first)
    shift_sq_sum = torch.zeros_like(first)
    for k in range(1, num_draws):
        loss, gradient = _loss_and_gradient(estimate(k), params)
        losses.append(loss)
        deviation = gradient - first
        shift_sum += deviation
        shift_sq_sum += deviation**2
    n = num_draws
    entry_variance = (shift_sq_sum - shift_sum**2 / n) / (n - 1)
    mean_grad = first + shift_sum / n
    loss_values = torch.tensor(losses, dtype=torch.float64)
    return EstimatorStats(
        num_draws=n,
        loss_mean=float(loss_values.mean()),
        loss_variance=float(loss_values.var(unbiased=True)),
        grad_trace_covariance=float(entry_variance.clamp(min=0.0).sum()),
        grad_mean_sq_norm=float(mean_grad.pow(2).sum()),
    )


def _loss_and_gradient(
    loss: torch.Tensor, params: Sequence[torch.Tensor]
) -> tuple[float, torch.Tensor]:
    """Return a scalar loss as a float and its gradient as one float64 vector (0 if unused)."""
    if loss.numel() != 1:
        raise ValueError(f"estimate must return a scalar, got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = [
        (g if g is not None else torch.zeros_like(p)).detach().double().flatten()
        for g, p in zip(grads, params, strict=True)
    ]
    return float(loss.detach()), torch.cat(flat)


def vlb_gradient_stats(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    images: torch.Tensor,
    sampler: TimestepSampler,
    num_draws: int,
    batch_size: int,
    seed: int = 0,
) -> EstimatorStats:
    """Measure the L_vlb minibatch estimate ``mean(T * L_t * w_t)`` with t drawn from ``sampler``.

    Every draw takes ``batch_size`` images of ``images`` ``[M, C, H, W]`` (float in [-1, 1]),
    t and the weights ``w_t = 1 / (T p_t)`` from ``sampler`` (not updated here), and fresh
    noise. The gradient is taken with respect to every trainable parameter of ``model``.
    Its mean is an unbiased estimate of ``L_0 + ... + L_{T-1}`` (bits/dim) for any sampler;
    a better p_t shows as a smaller variance. Dropout is off during the measurement.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to measure gradients of")
    generator = torch.Generator().manual_seed(seed)
    num_timesteps = diffusion.num_timesteps

    def estimate(_: int) -> torch.Tensor:
        index = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x_start = images[index]
        t, weights = sampler.sample(batch_size, generator=generator)
        noise = torch.randn(x_start.shape, generator=generator)
        terms = vlb_terms(diffusion, model, x_start, t, noise)
        return (num_timesteps * terms * weights).mean()

    was_training = model.training
    model.eval()
    try:
        return estimator_stats(estimate, params, num_draws)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------- 04 fast sampling


def with_variance_type(
    diffusion: GaussianDiffusion, variance_type: VarianceType | str
) -> GaussianDiffusion:
    """Return a copy of ``diffusion`` (same steps, respacing and options) with another variance.

    Used to sample a learned-variance model with a fixed variance: pair the copy with
    :class:`MeanChannels` so the network's variance channels are dropped.
    """
    return GaussianDiffusion(
        diffusion.betas64,
        mean_type=diffusion.mean_type,
        variance_type=parse_option(VarianceType, variance_type, "variance type"),
        loss_type=diffusion.loss_type,
        lambda_vlb=diffusion.lambda_vlb,
        timestep_range=diffusion.timestep_range,
        timestep_map=diffusion.timestep_map.cpu(),
        original_num_timesteps=diffusion.original_num_timesteps,
    ).to(diffusion.betas.device)


class MeanChannels(nn.Module):
    """Wrap a network and keep only the first ``channels`` output channels (the mean part).

    ``forward(x [N, C, H, W], t [N], **kwargs) -> [N, channels, H, W]``.
    """

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.net = net
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        output = self.net(x, t, **kwargs)
        if output.shape[1] < self.channels:
            raise ValueError(
                f"the network outputs {output.shape[1]} channels, fewer than the "
                f"{self.channels} mean channels to keep"
            )
        return output[:, : self.channels]


def fixed_variance_model(
    diffusion: GaussianDiffusion,
    net: nn.Module,
    variance_type: VarianceType | str,
    image_channels: int,
) -> tuple[GaussianDiffusion, nn.Module]:
    """Return ``(diffusion, model)`` that sample ``net``'s mean with a fixed variance.

    ``variance_type`` must be ``fixed_small`` (beta_tilde) or ``fixed_large`` (beta); a
    learned-variance ``net`` loses its variance channels, a fixed-variance one is kept as is.
    """
    variance = parse_option(VarianceType, variance_type, "variance type")
    if variance.is_learned:
        raise ValueError(
            f"variance_type must be fixed_small or fixed_large, got {variance.value}; a "
            "learned variance needs the network's own variance channels"
        )
    model = MeanChannels(net, image_channels) if diffusion.variance_type.is_learned else net
    return with_variance_type(diffusion, variance), model


SamplingMethod = Literal["ancestral", "ddim"]


@torch.no_grad()
def draw_samples(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    shape: Sequence[int],
    steps: int | str | None = None,
    method: SamplingMethod = "ancestral",
    seed: int = 0,
    eta: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Draw ``shape = [N, C, H, W]`` images in [-1, 1] from ``model`` (in eval mode).

    Args:
        steps: respacing spec (``25`` or ``"25"`` keeps 25 evenly spaced steps); ``None``
            runs the full chain.
        method: ``ancestral`` (uses ``diffusion``'s variance) or ``ddim`` (with ``eta``).
        seed: x_T and every later draw come from a private generator with this seed, so
            equal seeds start every method from the same x_T.
    """
    if method not in ("ancestral", "ddim"):
        raise ValueError(f"unknown sampling method {method!r}; valid choices are ancestral, ddim")
    chain = diffusion if steps is None else diffusion.respace(str(steps))
    generator = torch.Generator(device=diffusion.betas.device).manual_seed(seed)
    noise = torch.randn(tuple(shape), generator=generator, device=diffusion.betas.device)
    was_training = model.training
    model.eval()
    try:
        common = dict(noise=noise, model_kwargs=model_kwargs, generator=generator)
        if method == "ddim":
            return chain.ddim_sample_loop(model, shape, eta=eta, **common)
        return chain.p_sample_loop(model, shape, **common)
    finally:
        model.train(was_training)


class RandomConvFeatures(nn.Module):
    """A fixed, randomly initialised conv net used as an FID feature extractor.

    Maps uint8 ``[N, C, H, W]`` to float ``[N, num_features]``: two 3x3 convs with ReLU,
    then global average and max pooling. Its weights come from ``seed`` alone, so distances
    computed with the same seed and image size are comparable with each other. They are a
    proxy for sample quality, not Inception FID.
    """

    def __init__(self, in_channels: int, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        for conv in (self.conv1, self.conv2):
            fan_in = conv.in_channels * 9
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
                conv.weight.mul_((2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        self.num_features = 2 * width
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = uint8_to_model(images)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def frechet_distance(
    real: torch.Tensor, fake: torch.Tensor, feature: nn.Module, batch_size: int = 256
) -> float:
    """Return the Frechet distance between uint8 ``[N, C, H, W]`` image sets in ``feature`` space.

    Computed by torchmetrics' ``FrechetInceptionDistance(feature=...)``. ``feature`` maps
    uint8 images to ``[N, D]`` and has an int ``num_features`` (D). Both sets need at
    least 2 images; with fewer images than D the covariances are singular and the value is
    noisier but still defined.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, images in (("real", real), ("fake", fake)):
        if images.dtype != torch.uint8:
            raise ValueError(
                f"{name} images must be uint8, got {images.dtype}: convert them with to_uint8"
            )
        if images.shape[0] < 2:
            raise ValueError(f"{name} images: a covariance needs at least 2, got {images.shape[0]}")
    feature.eval().requires_grad_(False)
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=True)
    with torch.no_grad():
        for start in range(0, real.shape[0], batch_size):
            metric.update(real[start : start + batch_size], real=True)
        for start in range(0, fake.shape[0], batch_size):
            metric.update(fake[start : start + batch_size], real=False)
        return float(metric.compute())
