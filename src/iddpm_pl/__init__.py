"""Improved DDPM (Nichol & Dhariwal, 2021) on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
