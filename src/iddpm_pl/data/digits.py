"""scikit-learn's bundled 8x8 handwritten digits: the project's default, CPU-sized data."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor

from iddpm_pl.data.base import InMemoryDataModule, check_fractions, split_by_fractions

NATIVE_SIZE = 8
MAX_GREY_LEVEL = 16


def digits_uint8() -> tuple[Tensor, Tensor]:
    """Return all 1,797 digits as uint8 ``[1797, 1, 8, 8]`` and their labels int64 ``[1797]``.

    Grey level g in 0..16 becomes ``round(g * 255 / 16)``, so 0 -> 0 and 16 -> 255 (ties round
    to even: g = 8 gives 127.5 -> 128).
    """
    bunch = load_digits()
    grey = np.rint(bunch.images * (255 / MAX_GREY_LEVEL)).astype(np.uint8)  # [1797, 8, 8]
    images = torch.from_numpy(grey).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images, labels


class DigitsDataModule(InMemoryDataModule):
    """The 1,797 images of ``sklearn.datasets.load_digits``, labelled 0..9, one channel.

    Batches: ``x`` float32 ``[N, 1, image_size, image_size]`` in [-1, 1], ``y`` int64 ``[N]``.
    Train/val/test come from one seeded permutation of the whole set; nothing is downloaded.

    Args:
        image_size: 8 (native) or a multiple of 8, reached by nearest-neighbour upscaling.
        val_fraction: share of the images in the val split.
        test_fraction: share of the images in the test split.
        batch_size, num_workers, eval_batch_size, seed: see ``InMemoryDataModule``.
    """

    channels = 1
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        seed: int = 0,
        image_size: int = NATIVE_SIZE,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, seed)
        if image_size < NATIVE_SIZE or image_size % NATIVE_SIZE:
            raise ValueError(
                f"image_size must be a multiple of {NATIVE_SIZE} (nearest-neighbour upscaling "
                f"of the 8x8 digits by an integer factor), got {image_size}"
            )
        check_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_indices: dict[str, Tensor] | None = None

    def check(self) -> None:
        """Do nothing: the digits ship with scikit-learn, and the arguments were checked on init."""

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        images, labels = digits_uint8()
        factor = self.image_size // NATIVE_SIZE
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
        self.split_indices = split_by_fractions(
            len(images), self.val_fraction, self.test_fraction, self.seed
        )
        return {split: (images[i], labels[i]) for split, i in self.split_indices.items()}
