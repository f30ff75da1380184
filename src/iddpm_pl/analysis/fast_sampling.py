"""Sampling one model with fewer steps, other variances and DDIM, and scoring it (notebook 04)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from iddpm_pl.analysis.runs import uint8_to_model
from iddpm_pl.diffusion import (
    GaussianDiffusion,
    VarianceType,
    parse_option,
)


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
