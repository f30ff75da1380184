"""LightningDataModules, one per source, yielding ``(x, y)`` batches.

``x`` is float32 ``[N, C, H, W]`` on the 8-bit grid of [-1, 1] (``u8 / 127.5 - 1``) and ``y``
int64 ``[N]`` (``-1`` when unlabelled). Every module has ``image_size``, ``channels``,
``num_classes``, ``check()`` (early path and format checks), ``uint8_images(split)`` and
``labels(split)``.
"""

from iddpm_pl.data.base import InMemoryDataModule, float_to_uint8, uint8_to_float
from iddpm_pl.data.cifar10 import CIFAR10DataModule
from iddpm_pl.data.digits import DigitsDataModule
from iddpm_pl.data.image_folder import ImageFolderDataModule

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "float_to_uint8",
    "uint8_to_float",
]
