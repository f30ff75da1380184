"""Sample-quality metrics: FID and KID through torchmetrics, and a digits classifier.

Images enter every metric as uint8 ``[N, C, H, W]``. On the 8x8 digits the feature space is
the penultimate layer of a small classifier trained on the digits train split; on RGB data it
is Inception-v3 (needs torch-fidelity and a local weights file).
"""

from iddpm_pl.metrics.digits_classifier import (
    ClassifierFeatures,
    ClassifierSettings,
    DigitsClassifier,
    accuracy,
    cache_dir,
    load_digits_classifier,
    train_digits_classifier,
)
from iddpm_pl.metrics.fid import (
    INCEPTION_WEIGHTS_FILE,
    InceptionFeatures,
    compute_fid_kid,
    find_inception_weights,
)

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "ClassifierFeatures",
    "ClassifierSettings",
    "DigitsClassifier",
    "InceptionFeatures",
    "accuracy",
    "cache_dir",
    "compute_fid_kid",
    "find_inception_weights",
    "load_digits_classifier",
    "train_digits_classifier",
]
