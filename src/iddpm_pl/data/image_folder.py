"""Unlabelled PNG/JPEG images from a folder, decoded once into memory."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from iddpm_pl.data.base import (
    UNLABELLED,
    InMemoryDataModule,
    check_fractions,
    require_path,
    split_by_fractions,
)

SUFFIXES = (".png", ".jpg", ".jpeg")
PROGRESS_MIN_FILES = 300  # below this, decoding takes about a second and a bar is only noise


def list_images(root: Path) -> list[Path]:
    """Return the PNG/JPEG files under ``root`` (recursive), sorted by relative path."""
    files = [p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _progress(files: list[Path], desc: str) -> Iterable[Path]:
    return tqdm(files, desc=desc, unit="img", disable=len(files) < PROGRESS_MIN_FILES)


def load_square_rgb(path: Path, image_size: int) -> np.ndarray:
    """Decode ``path`` to RGB, resize its short side to ``image_size``, and centre-crop.

    Returns uint8 ``[image_size, image_size, 3]`` (HWC). Pillow's bicubic resize filters over
    the whole scaled support, so downscaling is antialiased.
    """
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise ValueError(f"cannot decode image {path}: {err!r}") from err
    width, height = image.size
    scale = image_size / min(width, height)
    if scale != 1:
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    left = (image.width - image_size) // 2
    top = (image.height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8)


class ImageFolderDataModule(InMemoryDataModule):
    """Every PNG/JPEG under a folder, square RGB, unlabelled (``y = -1``, ``num_classes=None``).

    Batches: ``x`` float32 ``[N, 3, image_size, image_size]`` in [-1, 1], ``y`` int64 ``[N]``.
    Files are found recursively and sorted by path; train/val/test are a seeded permutation.
    Limit: ``setup()`` decodes every file eagerly into one uint8 tensor of
    ``N * 3 * image_size**2`` bytes (10,000 images at 64 px take 123 MB), so this suits folders
    of up to some tens of thousands of small images, not ImageNet-sized ones.

    Args:
        data_dir: folder searched recursively for ``.png``, ``.jpg`` and ``.jpeg`` files.
        image_size: side of the square images: short side resized to it, then centre-cropped.
        random_flip: flip train batches horizontally with probability 1/2 per image.
        val_fraction: share of the files in the val split.
        test_fraction: share of the files in the test split.
        batch_size, num_workers, eval_batch_size, seed: see ``InMemoryDataModule``.
    """

    channels = 3
    num_classes = None

    def __init__(
        self,
        data_dir: str,
        image_size: int,
        batch_size: int = 64,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        seed: int = 0,
        random_flip: bool = False,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
    ) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, seed, random_flip)
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        check_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.files: list[Path] | None = None
        self.split_indices: dict[str, Tensor] | None = None

    def check(self) -> None:
        """Raise if the folder is missing, has no images or too few to split, or one fails to open.

        Runs Pillow's ``verify()`` on every file: it reads headers and checksums without
        decoding pixels, so it is much cheaper than ``setup()``.
        """
        root = require_path(self.data_dir, "a folder of PNG/JPEG images")
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder: expected a folder of PNG/JPEG images")
        files = list_images(root)
        if not files:
            raise ValueError(f"{root} contains no {'/'.join(SUFFIXES)} files")
        split_indices = split_by_fractions(
            len(files), self.val_fraction, self.test_fraction, self.seed
        )
        for path in _progress(files, desc="verify images"):
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
                raise ValueError(f"cannot open image {path}: {err!r}") from err
        self.files = files
        self.split_indices = split_indices

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        pixels = np.stack(
            [load_square_rgb(p, self.image_size) for p in _progress(self.files, "decode images")]
        )  # [N, H, W, 3]
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        labels = torch.full((len(images),), UNLABELLED, dtype=torch.int64)
        return {split: (images[i], labels[i]) for split, i in self.split_indices.items()}
