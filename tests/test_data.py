"""Data modules: splits, the 8-bit grid, CIFAR layout, crops, flips, loaders and early errors."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import SequentialSampler

from iddpm_pl.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    float_to_uint8,
    uint8_to_float,
)
from iddpm_pl.data.base import EpochShuffleSampler
from iddpm_pl.data.cifar10 import BATCH_FILES

# ---------------------------------------------------------------- digits


def test_digits_splits_cover_all_disjoint():
    dm = DigitsDataModule()
    dm.setup()
    sizes = {split: len(dm.labels(split)) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1437, "val": 180, "test": 180}
    indices = torch.cat(list(dm.split_indices.values()))
    assert sorted(indices.tolist()) == list(range(1797))


def test_digits_split_follows_seed():
    first, again, other = (
        DigitsDataModule(seed=0),
        DigitsDataModule(seed=0),
        DigitsDataModule(seed=1),
    )
    for dm in (first, again, other):
        dm.setup()
    assert torch.equal(first.uint8_images("test"), again.uint8_images("test"))
    assert torch.equal(first.labels("train"), again.labels("train"))
    assert not torch.equal(first.split_indices["test"], other.split_indices["test"])


def test_digits_batches_on_8bit_grid():
    dm = DigitsDataModule(batch_size=256)
    dm.setup()
    for x, y in dm.train_dataloader():
        levels = x * 127.5 + 127.5
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.min() >= 0
        assert levels.max() <= 255
        assert y.min() >= 0
        assert y.max() <= 9


def test_digits_grey_extremes_map_to_unit_range():
    dm = DigitsDataModule(eval_batch_size=2000)
    dm.setup()
    grey = torch.from_numpy(load_digits().images)[dm.split_indices["test"]].unsqueeze(1)
    x, _ = next(iter(dm.test_dataloader()))
    assert (grey == 16).any()
    assert (grey == 0).any()
    assert torch.all(x[grey == 16] == 1.0)
    assert torch.all(x[grey == 0] == -1.0)
    assert torch.equal(dm.uint8_images("test"), (grey * 255 / 16).round().to(torch.uint8))


def test_digits_upscale_nearest_neighbour():
    small, large = DigitsDataModule(), DigitsDataModule(image_size=24)
    small.setup()
    large.setup()
    big = large.uint8_images("val")
    assert big.shape == (180, 1, 24, 24)
    assert large.image_size == 24
    for dy in range(3):
        for dx in range(3):
            assert torch.equal(big[..., dy::3, dx::3], small.uint8_images("val"))


@pytest.mark.parametrize("image_size", [4, 12, 0])
def test_digits_rejects_non_multiple_size(image_size):
    with pytest.raises(ValueError, match="multiple of 8"):
        DigitsDataModule(image_size=image_size)


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction", "message"),
    [(-0.1, 0.1, "val_fraction"), (0.1, 1.0, "test_fraction"), (0.5, 0.5, "below 1")],
)
def test_digits_rejects_bad_fractions(val_fraction, test_fraction, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(val_fraction=val_fraction, test_fraction=test_fraction)


def test_loader_batch_dtypes_and_shapes():
    dm = DigitsDataModule(batch_size=32, eval_batch_size=100)
    assert (dm.image_size, dm.channels, dm.num_classes) == (8, 1, 10)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32
    assert x.shape == (32, 1, 8, 8)
    assert y.dtype == torch.int64
    assert y.shape == (32,)
    assert len(dm.train_dataloader()) == 1437 // 32
    val_sizes = [len(y) for _, y in dm.val_dataloader()]
    assert val_sizes == [100, 80]


def test_loader_settings():
    dm = DigitsDataModule(num_workers=1)
    dm.setup()
    train, test = dm.train_dataloader(), dm.test_dataloader()
    assert isinstance(train.sampler, EpochShuffleSampler)
    assert isinstance(test.sampler, SequentialSampler)
    assert train.drop_last
    assert not test.drop_last
    assert train.persistent_workers
    assert train.pin_memory == torch.cuda.is_available()
    assert not DigitsDataModule().train_dataloader().persistent_workers


def test_loader_with_worker_process():
    dm = DigitsDataModule(num_workers=1, eval_batch_size=500)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (180, 1, 8, 8)
    assert torch.equal(float_to_uint8(x), dm.uint8_images("test"))


def test_train_split_smaller_than_batch_raises():
    with pytest.raises(ValueError, match="fewer than batch_size=2000"):
        DigitsDataModule(batch_size=2000).train_dataloader()


def test_uint8_float_round_trip():
    u8 = torch.arange(256, dtype=torch.uint8)
    x = uint8_to_float(u8)
    assert x[0] == -1.0
    assert x[255] == 1.0
    assert torch.equal(float_to_uint8(x), u8)


# ---------------------------------------------------------------- CIFAR-10

PER_FILE = 6
PIXEL = (3, 5)  # (row, column) of the crafted pixel of test image 0
PIXEL_RGB = (10, 20, 30)


def _cifar_batch(seed: int, crafted: bool = False) -> dict:
    data = np.random.default_rng(seed).integers(0, 256, (PER_FILE, 3072), dtype=np.uint8)
    if crafted:
        row, column = PIXEL
        for channel, value in enumerate(PIXEL_RGB):
            data[0, channel * 1024 + row * 32 + column] = value
    return {b"data": data, b"labels": [(seed + i) % 10 for i in range(PER_FILE)]}


def _write_cifar(root: Path, skip: str | None = None) -> Path:
    """Write a tiny CIFAR-10 batches folder under ``root`` and return the folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for seed, name in enumerate(BATCH_FILES):
        if name != skip:
            batch = _cifar_batch(seed, crafted=name == "test_batch")
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def _tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture(params=["folder", "archive", "parent"])
def cifar_source(request, tmp_path) -> str:
    folder = _write_cifar(tmp_path / "src")
    if request.param == "folder":
        return str(folder)
    if request.param == "parent":
        return str(folder.parent)
    return str(_tar(folder, tmp_path / "cifar-10-python.tar.gz"))


def _cifar(data_dir: str, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir, batch_size=5, val_size=5, **kwargs)


def test_cifar_reads_pixels_as_chw(cifar_source):
    dm = _cifar(cifar_source)
    dm.setup()
    row, column = PIXEL
    assert dm.uint8_images("test")[0, :, row, column].tolist() == list(PIXEL_RGB)
    x, y = next(iter(dm.test_dataloader()))
    assert (x[0, :, row, column] * 127.5 + 127.5).tolist() == list(PIXEL_RGB)
    assert torch.equal(x, uint8_to_float(dm.uint8_images("test")[:5]))
    assert y.tolist() == [(5 + i) % 10 for i in range(5)]


def test_cifar_split_sizes(cifar_source):
    dm = _cifar(cifar_source)
    dm.setup()
    assert (dm.image_size, dm.channels, dm.num_classes) == (32, 3, 10)
    assert len(dm.labels("train")) == 5 * PER_FILE - 5
    assert len(dm.labels("val")) == 5
    assert len(dm.labels("test")) == PER_FILE
    assert dm.uint8_images("train").shape == (25, 3, 32, 32)
    indices = torch.cat([dm.split_indices["train"], dm.split_indices["val"]])
    assert sorted(indices.tolist()) == list(range(5 * PER_FILE))


def test_cifar_flips_are_horizontal(tmp_path):
    dm = _cifar(str(_write_cifar(tmp_path)))
    dm.setup()
    originals = uint8_to_float(dm.uint8_images("train"))
    torch.manual_seed(0)
    flipped = kept = 0
    for _ in range(4):
        for x, _ in dm.train_dataloader():
            for image in x:
                same = (originals == image).flatten(1).all(1).any().item()
                mirrored = (originals.flip(-1) == image).flatten(1).all(1).any().item()
                assert same or mirrored
                flipped += mirrored
                kept += same
    assert flipped > 0
    assert kept > 0


def test_cifar_eval_loaders_do_not_flip(tmp_path):
    dm = _cifar(str(_write_cifar(tmp_path)))
    dm.setup()
    for _ in range(3):
        x = torch.cat([x for x, _ in dm.val_dataloader()])
        assert torch.equal(x, uint8_to_float(dm.uint8_images("val")))


def test_cifar_no_flip_option(tmp_path):
    dm = _cifar(str(_write_cifar(tmp_path)), random_flip=False)
    dm.setup()
    originals = uint8_to_float(dm.uint8_images("train"))
    for x, _ in dm.train_dataloader():
        for image in x:
            assert (originals == image).flatten(1).all(1).any()


def test_cifar_missing_path_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist: expected .*cifar-10"):
        _cifar(str(missing)).check()


def test_cifar_folder_missing_batch_raises(tmp_path):
    folder = _write_cifar(tmp_path, skip="data_batch_3")
    dm = _cifar(str(folder))
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        dm.check()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        dm.setup()


def test_cifar_archive_missing_batch_raises(tmp_path):
    archive = _tar(_write_cifar(tmp_path / "src", skip="test_batch"), tmp_path / "c.tar.gz")
    with pytest.raises(FileNotFoundError, match=r"c\.tar\.gz.*test_batch"):
        _cifar(str(archive)).check()


def test_cifar_corrupt_archive_raises(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not a gzip file")
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz is not a readable"):
        _cifar(str(archive)).check()


def test_cifar_corrupt_pickle_raises(tmp_path):
    folder = _write_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_2 is not a readable CIFAR-10 batch"):
        _cifar(str(folder)).setup()


def test_cifar_wrong_shape_raises(tmp_path):
    folder = _write_cifar(tmp_path)
    batch = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_4").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"data_batch_4 is not a CIFAR-10 batch.*\(2, 100\)"):
        _cifar(str(folder)).setup()


def test_cifar_val_size_too_large_raises(tmp_path):
    dm = CIFAR10DataModule(str(_write_cifar(tmp_path)), val_size=30)
    with pytest.raises(ValueError, match="val_size=30 leaves no train split"):
        dm.setup()


# ---------------------------------------------------------------- image folder

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _stripes(width: int, height: int) -> Image.Image:
    """Return an image whose left, middle and right thirds are red, green and blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    pixels[:, :third] = RED
    pixels[:, third : 2 * third] = GREEN
    pixels[:, 2 * third :] = BLUE
    return Image.fromarray(pixels)


def _write_images(root: Path) -> Path:
    (root / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [(20, 30), (45, 16), (16, 16), (64, 40), (33, 17), (50, 50)]
    for i, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i == 1:
            image = image.convert("L")
        if i == 2:
            image = image.convert("RGBA")
        suffix = ".JPG" if i % 2 else ".png"
        image.save(root / ("nested" if i >= 4 else "") / f"img{i}{suffix}")
    (root / "notes.txt").write_text("not an image")
    return root


def test_image_folder_shapes(tmp_path):
    dm = ImageFolderDataModule(str(_write_images(tmp_path)), image_size=16, batch_size=2)
    assert (dm.image_size, dm.channels, dm.num_classes) == (16, 3, None)
    dm.setup()
    assert len(dm.files) == 6
    assert {split: len(dm.labels(split)) for split in ("train", "val", "test")} == {
        "train": 4,
        "val": 1,
        "test": 1,
    }
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 16, 16)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert y.tolist() == [-1, -1]
    assert dm.uint8_images("val").shape == (1, 3, 16, 16)


def test_image_folder_files_sorted(tmp_path):
    dm = ImageFolderDataModule(str(_write_images(tmp_path)), image_size=8)
    dm.check()
    names = [p.relative_to(tmp_path).as_posix() for p in dm.files]
    assert names == sorted(names)
    assert names[-1] == "nested/img5.JPG"


@pytest.mark.parametrize("tall", [False, True])
def test_centre_crop_keeps_centre(tmp_path, tall):
    image = _stripes(60, 20)
    if tall:
        image = image.transpose(Image.Transpose.ROTATE_90)
    image.save(tmp_path / "stripes.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=20, val_fraction=0, test_fraction=0)
    dm.setup()
    crop = dm.uint8_images("train")[0].permute(1, 2, 0)  # [20, 20, 3]
    assert torch.all(crop == torch.tensor(GREEN, dtype=torch.uint8))


def test_centre_crop_after_resize_keeps_centre(tmp_path):
    _stripes(240, 80).save(tmp_path / "wide.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=20, val_fraction=0, test_fraction=0)
    dm.setup()
    crop = dm.uint8_images("train")[0].to(torch.int64)  # [3, 20, 20]
    assert crop.shape == (3, 20, 20)
    assert crop[:, :, 3:17].tolist() == [[[0] * 14] * 20, [[255] * 14] * 20, [[0] * 14] * 20]
    assert crop[1].float().mean() > 230


def test_image_folder_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent does not exist: expected a folder"):
        ImageFolderDataModule(str(tmp_path / "absent"), image_size=8).check()


def test_image_folder_not_a_folder_raises(tmp_path):
    file = tmp_path / "a.png"
    _stripes(9, 9).save(file)
    with pytest.raises(ValueError, match="a.png is not a folder"):
        ImageFolderDataModule(str(file), image_size=8).check()


def test_image_folder_empty_raises(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no .png/.jpg/.jpeg files"):
        ImageFolderDataModule(str(tmp_path), image_size=8).setup()


def test_image_folder_corrupt_image_raises(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "nested" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8)
    with pytest.raises(ValueError, match=r"cannot open image .*broken\.png: .*Error"):
        dm.check()


def test_image_folder_bad_checksum_raises(tmp_path):
    _write_images(tmp_path)
    data = bytearray((tmp_path / "img0.png").read_bytes())
    data[-30] ^= 0xFF  # inside the last IDAT chunk: the header still opens, the CRC fails
    (tmp_path / "img0.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"cannot open image .*img0\.png: .*checksum"):
        ImageFolderDataModule(str(tmp_path), image_size=8).check()


def test_image_folder_too_few_images_raises(tmp_path):
    _stripes(9, 9).save(tmp_path / "only.png")
    with pytest.raises(ValueError, match="1 images leave no train split"):
        ImageFolderDataModule(str(tmp_path), image_size=8).check()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 0}, "image_size must be at least 1"),
        ({"image_size": 8, "val_fraction": 1.5}, "val_fraction"),
        ({"image_size": 8, "batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_image_folder_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(str(tmp_path), **kwargs)


def test_epoch_shuffle_depends_on_epoch_only():
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG must not matter
    assert list(sampler) == first
    assert sorted(first) == list(range(50))
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
