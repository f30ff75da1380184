"""CIFAR-10 from the standard python archive on local disk (never downloaded)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
import torch
from torch import Tensor

from iddpm_pl.data.base import InMemoryDataModule, require_path

FOLDER_NAME = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BATCH_FILES = (*TRAIN_FILES, TEST_FILE)
EXPECTED = f"the {FOLDER_NAME}/ folder, the {ARCHIVE_NAME} archive, or a folder containing one"


def find_source(data_dir: str | Path) -> Path:
    """Return the batches folder or ``.tar.gz`` archive at or directly under ``data_dir``."""
    path = require_path(data_dir, EXPECTED)
    if path.is_dir() and path.name != FOLDER_NAME:
        for candidate in (path / FOLDER_NAME, path / ARCHIVE_NAME):
            if candidate.exists():
                return candidate
    return path


def _batch_name(member: tarfile.TarInfo) -> str | None:
    """Return the batch file name of a regular-file member ``cifar-10-batches-py/<name>``."""
    parts = [p for p in PurePosixPath(member.name).parts if p != "."]
    if member.isfile() and parts[-2:-1] == [FOLDER_NAME] and parts[-1] in BATCH_FILES:
        return parts[-1]
    return None


def _open_archive(path: Path) -> tarfile.TarFile:
    """Open a ``.tar.gz`` as a forward-only stream, so one pass decompresses it once.

    Members are only read through ``extractfile``, never extracted, so no member name can
    write outside a folder (the usual tarfile path-traversal risk does not arise).
    """
    return tarfile.open(path, "r|gz")


def _read_batch(file: IO[bytes], name: str) -> tuple[Tensor, Tensor]:
    """Decode one batch file to uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``.

    Each row of ``b"data"`` contains 1024 red, then 1024 green, then 1024 blue values, each a
    32x32 image in row-major order, so a reshape to ``[N, 3, 32, 32]`` gives CHW directly.
    """
    # The CIFAR-10 python format is itself a pickle, and unpickling can run arbitrary code:
    # only point data_dir at archives you trust. encoding="bytes" reads its Python 2 pickles.
    try:
        batch = pickle.load(file, encoding="bytes")
    except Exception as err:  # a broken pickle can raise almost any exception type
        raise ValueError(f"{name} is not a readable CIFAR-10 batch pickle: {err!r}") from err
    if not isinstance(batch, dict):
        raise ValueError(
            f"{name} is not a CIFAR-10 batch: expected a dict, found {type(batch).__name__}"
        )
    data = batch.get(b"data")
    labels = np.asarray(batch.get(b"labels"))
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
        and labels.shape == data.shape[:1]
        and np.issubdtype(labels.dtype, np.integer)
    ):
        found = getattr(data, "dtype", type(data).__name__), getattr(data, "shape", None)
        raise ValueError(
            f"{name} is not a CIFAR-10 batch: expected b'data' uint8 [N, 3072] and b'labels' "
            f"of N integers, found b'data' {found} and b'labels' {labels.dtype} {labels.shape}"
        )
    if labels.size and not (labels.min() >= 0 and labels.max() <= 9):
        raise ValueError(f"{name} has labels outside 0..9")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10, 32x32 RGB, labelled 0..9, held in memory (about 180 MB of uint8).

    Batches: ``x`` float32 ``[N, 3, 32, 32]`` in [-1, 1], ``y`` int64 ``[N]``. Train is the
    50,000 training images less a seeded val split of ``val_size``; test is ``test_batch``.

    Args:
        data_dir: the extracted ``cifar-10-batches-py/`` folder (``data_batch_1`` .. ``5``,
            ``test_batch``), the ``cifar-10-python.tar.gz`` archive (read without extracting),
            or a folder containing either. Pickle inside: use only archives you trust.
        val_size: training images moved to the val split.
        random_flip: flip train batches horizontally with probability 1/2 per image.
        batch_size, num_workers, eval_batch_size, seed: see ``InMemoryDataModule``.
    """

    image_size = 32
    channels = 3
    num_classes = 10

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 64,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        seed: int = 0,
        val_size: int = 5000,
        random_flip: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, seed, random_flip)
        if val_size < 0:
            raise ValueError(f"val_size must be at least 0, got {val_size}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.val_size = val_size
        self.split_indices: dict[str, Tensor] | None = None

    def check(self) -> None:
        """Raise if the folder or archive is missing, unreadable or lacks a batch file.

        For the archive this decompresses it once to list its members (about a second).
        """
        source = find_source(self.data_dir)
        if source.is_dir():
            names = {p.name for p in source.iterdir() if p.is_file()}
        else:
            try:
                with _open_archive(source) as archive:
                    names = {_batch_name(member) for member in archive}
            except (tarfile.TarError, OSError, EOFError) as err:
                raise ValueError(f"{source} is not a readable .tar.gz archive: {err!r}") from err
        missing = [name for name in BATCH_FILES if name not in names]
        if missing:
            where = source if source.is_dir() else f"{source} (under {FOLDER_NAME}/)"
            raise FileNotFoundError(f"{where} lacks the CIFAR-10 batch files {missing}")

    def _read_all(self) -> dict[str, tuple[Tensor, Tensor]]:
        source = find_source(self.data_dir)
        if source.is_dir():
            batches = {}
            for name in BATCH_FILES:
                with open(source / name, "rb") as file:
                    batches[name] = _read_batch(file, str(source / name))
            return batches
        batches = {}
        with _open_archive(source) as archive:
            for member in archive:
                name = _batch_name(member)
                if name is not None:
                    batches[name] = _read_batch(archive.extractfile(member), f"{source}:{name}")
        return batches

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        batches = self._read_all()
        images = torch.cat([batches[name][0] for name in TRAIN_FILES])
        labels = torch.cat([batches[name][1] for name in TRAIN_FILES])
        if self.val_size >= len(images):
            raise ValueError(
                f"val_size={self.val_size} leaves no train split from {len(images)} images"
            )
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        self.split_indices = {"val": order[: self.val_size], "train": order[self.val_size :]}
        splits = {split: (images[i], labels[i]) for split, i in self.split_indices.items()}
        splits["test"] = batches[TEST_FILE]
        return splits
