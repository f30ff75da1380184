"""A small digits classifier: the feature space of FID and KID on 8x8 digits, and the judge of
class-conditional samples.

Inception features are made for large RGB photographs and separate 8x8 grey digits poorly.
A classifier trained on the digits themselves gives features that separate the classes. Training is deterministic (fixed seed, full batch, fixed order) and the weights are
cached on disk under a key made from every setting, so every evaluation of a split uses the
same feature extractor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iddpm_pl.data.digits import NATIVE_SIZE, DigitsDataModule

log = logging.getLogger(__name__)

NUM_CLASSES = 10
# Part of the cache key: bump it when the architecture or the training loop changes.
CLASSIFIER_VERSION = 1


def cache_dir() -> Path:
    """Return ``$IDDPM_CACHE_DIR``, or ``~/.cache/iddpm_pl`` when it is unset."""
    root = os.environ.get("IDDPM_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "iddpm_pl"


@dataclass(frozen=True)
class ClassifierSettings:
    """What decides the classifier's weights; each field is part of the cache key.

    Args:
        hidden: width of the first hidden layer.
        num_features: width of the second hidden layer, the features of FID and KID.
        steps: full-batch Adam steps over the training split.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: seed of the initial weights.
        split_seed, val_fraction, test_fraction: the digits split (``DigitsDataModule``);
            the classifier trains on its train split only, so the test split stays held out.
    """

    hidden: int = 256
    num_features: int = 64
    steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def key(self) -> str:
        """Return a short hash of the settings and ``CLASSIFIER_VERSION``."""
        text = json.dumps({**asdict(self), "version": CLASSIFIER_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class DigitsClassifier(nn.Module):
    """An MLP on 8x8 digits: 64 pixels -> ``hidden`` -> ``num_features`` -> 10 logits.

    Inputs are ``[N, 1, H, W]`` images, uint8 in 0..255 or float in [-1, 1]. Larger images
    (digits upscaled by an integer factor) are area-averaged back to 8x8 first, which undoes
    nearest-neighbour upscaling exactly.
    """

    def __init__(self, hidden: int = 256, num_features: int = 64) -> None:
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(NATIVE_SIZE * NATIVE_SIZE, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(num_features, NUM_CLASSES)
        # Set after training from the training split: the per-feature mean and one scale,
        # the root mean square of the centred activations. Features centred and scaled so
        # keep KID's cubic kernel (x.y / d + 1)^3 near the range it has with Inception
        # features. The scale is a single number on purpose: dividing each feature by its
        # own spread would blow up units that are nearly silent on digits but fire on noise.
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_scale", torch.ones(()))

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """Map ``[N, 1, H, W]`` images to float32 ``[N, 1, 8, 8]`` in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(
                f"the digits classifier takes [N, 1, H, W] images, got shape "
                f"{tuple(images.shape)}; it only applies to one-channel digits"
            )
        if images.dtype == torch.uint8:
            x = images.float() / 127.5 - 1.0
        else:
            x = images.float()
        if x.shape[-2:] != (NATIVE_SIZE, NATIVE_SIZE):
            x = F.interpolate(x, size=(NATIVE_SIZE, NATIVE_SIZE), mode="area")
        return x

    def activations(self, images: torch.Tensor) -> torch.Tensor:
        """Return the ``[N, num_features]`` activations of the layer before the output layer."""
        return self.body(self.preprocess(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the activations centred and scaled by the training-split statistics ``[N, F]``."""
        return (self.activations(images) - self.feature_mean) / self.feature_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits ``[N, 10]``."""
        return self.head(self.activations(images))


class ClassifierFeatures(nn.Module):
    """The classifier's feature layer as the ``feature`` module of torchmetrics' FID and KID.

    torchmetrics neither freezes nor switches such a module to eval mode, so this one
    freezes itself, stays in eval mode, and reports ``num_features`` (without it torchmetrics
    would probe the module with a 299x299 RGB image).
    """

    def __init__(self, classifier: DigitsClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClassifierFeatures:
        """Keep eval mode whatever mode the parent metric sets."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return float32 features ``[N, num_features]`` of uint8 ``[N, 1, H, W]`` images."""
        return self.classifier.features(images)


def digits_split(settings: ClassifierSettings) -> DigitsDataModule:
    """Return the set-up 8x8 digits data module with the settings' split."""
    datamodule = DigitsDataModule(
        seed=settings.split_seed,
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
    )
    datamodule.setup()
    return datamodule


@torch.no_grad()
def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the fraction of ``[N, 1, H, W]`` images whose predicted class equals ``labels``."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError("accuracy needs at least one image")
    was_training = classifier.training
    classifier.eval()
    predictions = classifier(images).argmax(dim=1)
    classifier.train(was_training)
    return float((predictions.cpu() == labels.cpu()).float().mean())


def train_digits_classifier(
    settings: ClassifierSettings,
) -> tuple[DigitsClassifier, dict[str, float]]:
    """Train the classifier on the digits train split; return it and its split accuracies.

    Full-batch Adam in a fixed order from weights drawn with ``settings.seed`` inside a
    forked RNG, so the global RNG is untouched and the result does not depend on it.
    """
    datamodule = digits_split(settings)
    images, labels = datamodule.uint8_images("train"), datamodule.labels("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        classifier = DigitsClassifier(settings.hidden, settings.num_features)
    optimizer = torch.optim.Adam(
        classifier.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    inputs = DigitsClassifier.preprocess(images)  # converted once for the whole run
    classifier.train()
    for _ in range(settings.steps):
        loss = F.cross_entropy(classifier(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    classifier.eval().requires_grad_(False)
    with torch.no_grad():
        activations = classifier.activations(inputs)
        mean = activations.mean(dim=0)
        classifier.feature_mean.copy_(mean)
        classifier.feature_scale.copy_((activations - mean).pow(2).mean().sqrt())

    scores = {
        f"{split}_accuracy": accuracy(
            classifier, datamodule.uint8_images(split), datamodule.labels(split)
        )
        for split in ("train", "val", "test")
    }
    scores["final_loss"] = loss.item()
    return classifier, scores


def load_digits_classifier(
    settings: ClassifierSettings | None = None, directory: str | Path | None = None
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Return the cached classifier for ``settings``, training and caching it on a miss.

    The file is ``<directory>/digits_classifier/<settings key>.pt`` (``directory``
    defaults to :func:`cache_dir`) and contains only tensors and plain values, so it loads
    with ``weights_only=True``. An unreadable cache file is replaced.

    Returns:
        The classifier in eval mode with frozen weights, and an info dict with the
        settings, the key, the cache path and the train/val/test accuracies.
    """
    settings = settings or ClassifierSettings()
    directory = Path(directory) if directory is not None else cache_dir()
    path = directory / "digits_classifier" / f"{settings.key()}.pt"
    classifier = DigitsClassifier(settings.hidden, settings.num_features)
    scores: dict[str, float] | None = None
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            classifier.load_state_dict(saved["state_dict"])
            scores = dict(saved["scores"])
        except Exception as error:  # any unreadable file is retrained, not trusted
            log.warning("retraining the digits classifier: cache %s unreadable (%s)", path, error)
            scores = None
    if scores is None:
        log.info("training the digits classifier (%d full-batch steps)", settings.steps)
        classifier, scores = train_digits_classifier(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": classifier.state_dict(), "scores": scores}, partial)
        partial.replace(path)  # atomic, so a concurrent reader never sees half a file
    classifier.eval().requires_grad_(False)
    info = {"settings": asdict(settings), "key": settings.key(), "path": str(path), **scores}
    log.info("digits classifier %s: test accuracy %.4f", settings.key(), scores["test_accuracy"])
    return classifier, info
