"""Denoising networks: the Improved DDPM UNet and its building blocks."""

from iddpm_pl.models.unet import UNet

__all__ = ["UNet"]
