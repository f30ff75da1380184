"""Shared data helpers: the 8-bit grid conversion, seeded splits and the in-memory DataModule.

Conventions for every data module of the package:

- images are stored as uint8 tensors ``[N, C, H, W]``; a batch ``(x, y)`` has ``x`` float32
  ``[N, C, H, W]`` on the 8-bit grid of [-1, 1] (``x = u8 / 127.5 - 1``, so 0 -> -1.0 and
  255 -> 1.0, the 256 bins of the discretized Gaussian decoder) and ``y`` int64 ``[N]``,
  ``-1`` for unlabelled data;
- splits are ``"train"``, ``"val"`` and ``"test"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

SPLITS = ("train", "val", "test")
UNLABELLED = -1


def uint8_to_float(images: Tensor) -> Tensor:
    """Map uint8 images ``[..., H, W]`` in 0..255 to float32 in [-1, 1] (``u8 / 127.5 - 1``)."""
    return images.to(torch.float32) / 127.5 - 1.0


def float_to_uint8(x: Tensor) -> Tensor:
    """Map float images in [-1, 1] back to uint8 0..255, rounding to the nearest grid value."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def require_path(path: str | Path, expected: str) -> Path:
    """Return ``path`` as a ``Path``, or raise ``FileNotFoundError`` naming what was expected."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: expected {expected}")
    return path


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ``ValueError`` unless both fractions are in [0, 1) and leave images for training."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 to leave a train split, "
            f"got {val_fraction} + {test_fraction}"
        )


def split_by_fractions(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, Tensor]:
    """Split ``range(n)`` into train/val/test int64 index tensors with a seeded permutation.

    A positive fraction keeps at least one image, so a small folder still gets a val split.
    The same ``(n, fractions, seed)`` always gives the same split, on every platform.
    """
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} images leave no train split with val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }


class ImageBatchCollate:
    """Stack ``(uint8 [C, H, W], int64 [])`` items into a float batch, with optional flips.

    Returns ``x`` float32 ``[N, C, H, W]`` in [-1, 1] and ``y`` int64 ``[N]``. Horizontal flips
    are drawn per image from torch's global generator, which Lightning's ``seed_everything`` and
    the DataLoader's per-worker seeding make reproducible. A class rather than a closure, so
    worker processes can pickle it.
    """

    def __init__(self, random_flip: bool = False) -> None:
        self.random_flip = random_flip

    def __call__(self, items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        images = torch.stack([image for image, _ in items])
        labels = torch.stack([label for _, label in items])
        if self.random_flip:
            flip = torch.rand(images.shape[0]) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return uint8_to_float(images), labels


class EpochShuffleSampler(Sampler[int]):
    """Shuffle with a permutation drawn from ``(seed, epoch)``, not from the global RNG.

    Lightning calls ``set_epoch`` at the start of every epoch, so a run resumed from a
    checkpoint sees the same order as an uninterrupted one. The seed defaults to the run's
    ``seed_everything`` seed (``PL_GLOBAL_SEED``).
    """

    def __init__(self, length: int, seed: int | None = None) -> None:
        self.length = length
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def eval_sampler(dataset: TensorDataset) -> Sampler[int] | None:
    """Return the sampler of a val or test loader: ``None`` (in order) unless distributed.

    Under a process group of W > 1 processes, rank r reads images r, r + W, r + 2W, ... and
    no image twice, so a metric averaged across ranks covers the split exactly once (the
    ``DistributedSampler`` that Lightning would insert pads the shards by repeating images).
    Shards differ in size by at most one image. Lightning leaves a ``DistributedSampler``
    subclass in place.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world_size = torch.distributed.get_world_size()
    if world_size == 1:
        return None
    if len(dataset) < world_size:
        raise ValueError(
            f"an evaluation split of {len(dataset)} images cannot give each of {world_size} "
            f"processes an image: use a larger val/test fraction or fewer processes"
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=world_size, rank=torch.distributed.get_rank(), shuffle=False
    )


class InMemoryDataModule(LightningDataModule):
    """Base DataModule holding every split in memory as uint8 images and int64 labels.

    Subclasses set ``image_size``, ``channels`` and ``num_classes`` (``None`` when unlabelled),
    implement ``check()`` (cheap path and format checks that raise before any training) and
    ``_load()``. Images stay uint8 in memory (a quarter of float32) and are converted per batch.

    Args:
        batch_size: train batch size; train batches drop the last incomplete batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        eval_batch_size: batch size of the val and test loaders (default: ``batch_size``).
        seed: seed of the split permutation, independent of the training seed.
        random_flip: flip train images horizontally with probability 1/2.
    """

    image_size: int
    channels: int
    num_classes: int | None

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        seed: int = 0,
        random_flip: bool = False,
    ) -> None:
        super().__init__()
        eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {num_workers}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.random_flip = random_flip
        self._splits: dict[str, TensorDataset] | None = None

    def check(self) -> None:
        """Raise before training if the source is missing or malformed (cheap, no decoding)."""
        raise NotImplementedError

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Return ``{split: (uint8 [N, C, H, W], int64 [N])}`` for every split in ``SPLITS``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Check the source and load all splits once; later calls (other stages) reuse them."""
        if self._splits is not None:
            return
        self.check()
        shape = (self.channels, self.image_size, self.image_size)
        splits = {}
        for split, (images, labels) in self._load().items():
            assert images.dtype == torch.uint8, images.dtype
            assert images.shape[1:] == shape, images.shape
            assert labels.dtype == torch.int64, labels.dtype
            assert labels.shape == images.shape[:1], labels.shape
            splits[split] = TensorDataset(images, labels)
        self._splits = splits

    def _dataset(self, split: str) -> TensorDataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.setup()
        return self._splits[split]

    def uint8_images(self, split: str) -> Tensor:
        """Return the split's images, uint8 ``[N, C, H, W]`` (e.g. for FID reference statistics)."""
        return self._dataset(split).tensors[0]

    def labels(self, split: str) -> Tensor:
        """Return the split's labels, int64 ``[N]`` (``-1`` for unlabelled data)."""
        return self._dataset(split).tensors[1]

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        dataset = self._dataset(split)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(len(dataset)) if train else eval_sampler(dataset),
            drop_last=train,
            num_workers=self.num_workers,
            collate_fn=ImageBatchCollate(random_flip=train and self.random_flip),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Starting an iterator draws a base seed; a private generator keeps that draw off
            # the global RNG, so a resumed run draws the same noise as an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, randomly flipped if enabled, incomplete last batch dropped."""
        n = len(self._dataset("train"))
        if n < self.batch_size:
            raise ValueError(
                f"the train split has {n} images, fewer than batch_size={self.batch_size}, so "
                f"dropping the incomplete batch would leave none: lower batch_size"
            )
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """In order, no flips, every image kept (once, across ranks, under DDP)."""
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """In order, no flips, every image kept (once, across ranks, under DDP)."""
        return self._loader("test", self.eval_batch_size, train=False)
