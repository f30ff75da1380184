"""FID and KID through torchmetrics, with a feature extractor chosen for the data.

Both metrics compare feature statistics of reference images and samples. The helpers here
take uint8 ``[N, C, H, W]`` images for both sides, so reference and samples reach the
feature extractor through the same conversion and resizing:

- 8x8 digits: the penultimate layer of :class:`~iddpm_pl.metrics.digits_classifier.DigitsClassifier`,
  trained on the digits train split, because Inception features separate 8x8 grey digits poorly;
- RGB data: Inception-v3 pool features (2048), the usual FID, which need the torch-fidelity
  package and its weights file on local disk (nothing is downloaded here). torchmetrics resizes
  both sides to 299x299 inside the network.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

log = logging.getLogger(__name__)

# The file torch-fidelity downloads to torch.hub's checkpoint folder at first use.
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_NUM_FEATURES = 2048
INCEPTION_HELP = (
    "FID and KID on RGB data use Inception-v3 features from the torch-fidelity package. "
    "Install it (pip install torch-fidelity; it needs a torchvision build that matches your "
    f"torch), get the weights file {INCEPTION_WEIGHTS_FILE} (torch-fidelity downloads it on a "
    "machine with network access, into torch.hub's checkpoints folder) and pass "
    "features.inception_weights_path=PATH, or place it in <torch.hub.get_dir()>/checkpoints/."
)


def find_inception_weights(path: str | Path | None = None) -> Path:
    """Return a local Inception weights file: ``path``, or the one torch-fidelity cached.

    Raises:
        ValueError: when torch-fidelity is not installed.
        FileNotFoundError: when ``path`` is missing, or no path is given and nothing is cached.
    """
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ValueError(f"torch-fidelity is not installed. {INCEPTION_HELP}")
    if path is not None:
        weights = Path(path).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(
                f"features.inception_weights_path={weights} does not exist. {INCEPTION_HELP}"
            )
        return weights
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if not cached.is_file():
        raise FileNotFoundError(f"no Inception weights at {cached}. {INCEPTION_HELP}")
    return cached


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features ``[N, 2048]`` of uint8 ``[N, C, H, W]`` images, C = 1 or 3.

    One-channel images are repeated to three. The network stays in eval mode with frozen
    weights, and ``num_features`` gives torchmetrics the feature width.
    """

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        # Imported here: torchmetrics refuses to build it without torch-fidelity.
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(INCEPTION_NUM_FEATURES)],
            feature_extractor_weights_path=str(weights_path),
        )
        self.num_features = INCEPTION_NUM_FEATURES
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Keep eval mode whatever mode the parent metric sets."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.inception(images)


def check_image_pair(real: torch.Tensor, fake: torch.Tensor) -> None:
    """Raise a ValueError unless both are uint8 ``[N, C, H, W]`` of one shape, N >= 2."""
    for name, images in (("reference", real), ("sample", fake)):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{name} images must be uint8 [N, C, H, W], got {images.dtype} of shape "
                f"{tuple(images.shape)}; convert with iddpm_pl.utils.images.to_uint8 first"
            )
        if images.shape[0] < 2:
            raise ValueError(f"FID and KID need at least 2 {name} images, got {images.shape[0]}")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(
            f"reference images are {tuple(real.shape[1:])} but samples are "
            f"{tuple(fake.shape[1:])} (C, H, W); compare images of one size"
        )


def _update(metric: Any, images: torch.Tensor, real: bool, batch_size: int) -> None:
    device = metric.device
    for start in range(0, images.shape[0], batch_size):
        metric.update(images[start : start + batch_size].to(device), real=real)


def compute_fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    feature: nn.Module,
    metrics: tuple[str, ...] | list[str] = ("fid", "kid"),
    batch_size: int = 256,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, Any]]:
    """Compute FID and/or KID between reference and sample images.

    Args:
        real: uint8 ``[N, C, H, W]`` reference images.
        fake: uint8 ``[M, C, H, W]`` samples.
        feature: the feature module (frozen, eval mode, with ``num_features``), e.g.
            :class:`~iddpm_pl.metrics.digits_classifier.ClassifierFeatures`.
        metrics: any of ``"fid"`` and ``"kid"``.
        batch_size: images per feature-extractor call.
        kid_subset_size: images per KID subset, lowered to ``min(N, M)`` when larger.
        kid_subsets: number of KID subsets.
        seed: seed of the KID subsets (drawn in a forked RNG).

    Returns:
        ``{"fid": {"value", ...}, "kid": {"mean", "std", ...}}``, each with the image counts,
        the batch size and the feature width recorded beside the score.
    """
    check_image_pair(real, fake)
    common = {
        "num_reference": int(real.shape[0]),
        "num_samples": int(fake.shape[0]),
        "batch_size": batch_size,
        "num_features": int(feature.num_features),
    }
    results: dict[str, dict[str, Any]] = {}
    if "fid" in metrics:
        fid = FrechetInceptionDistance(feature=feature, reset_real_features=True).to(device)
        _update(fid, real, True, batch_size)
        _update(fid, fake, False, batch_size)
        results["fid"] = {"value": float(fid.compute()), **common}
    if "kid" in metrics:
        subset_size = min(kid_subset_size, real.shape[0], fake.shape[0])
        with warnings.catch_warnings():
            # KID keeps every feature vector in memory and warns about it on every construction.
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            kid = KernelInceptionDistance(
                feature=feature, subsets=kid_subsets, subset_size=subset_size
            ).to(device)
        _update(kid, real, True, batch_size)
        _update(kid, fake, False, batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = kid.compute()
        results["kid"] = {
            "mean": float(mean),
            "std": float(std),
            "subset_size": int(subset_size),
            "subsets": kid_subsets,
            **common,
        }
    return results
