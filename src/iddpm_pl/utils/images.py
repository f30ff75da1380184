"""Image helpers: [-1, 1] tensors to uint8, grids, PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map ``[N, C, H, W]`` images in [-1, 1] to uint8 on the 8-bit grid (values clamped)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile uint8 ``[N, C, H, W]`` images into one ``[rows * H', cols * W', C]`` array.

    Each image gets ``padding`` pixels of black border; ``nrow`` images per row (default:
    the ceiling of sqrt(N)). Missing cells of the last row stay black.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"make_grid expects uint8 images, got {images.dtype}; call to_uint8 first")
    n = images.shape[0]
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    padded = F.pad(images, (padding, padding, padding, padding))
    blank = padded.new_zeros(rows * cols - n, *padded.shape[1:])
    tiles = torch.cat([padded, blank])
    grid = rearrange(tiles, "(r c) ch h w -> (r h) (c w) ch", r=rows, c=cols)
    return grid.cpu().numpy()


def save_png(grid: np.ndarray, path: str | Path, upscale: int = 1) -> Path:
    """Write an ``[H, W, C]`` uint8 array as PNG, enlarged ``upscale`` times (nearest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = grid[..., 0] if grid.shape[-1] == 1 else grid
    image = Image.fromarray(array)
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    image.save(path)
    return path
