"""Building blocks of the Improved DDPM UNet.

Conventions: feature maps are ``[N, C, H, W]``, the timestep embedding fed to the blocks is
``[N, E]`` (``E = 4 * model_channels`` in the UNet). Every block works with channels_last
inputs, under ``torch.autocast`` and under ``torch.compile`` (no data-dependent Python branches).

Layers that end a residual branch (the second conv of a residual block, the output projection of
an attention block) start at zero, so every block is the identity at initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionBlock",
    "Downsample",
    "GroupNorm32",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "Upsample",
    "normalization",
    "timestep_embedding",
    "zero_module",
]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and DDPM.

    With ``half = dim // 2`` and ``omega_i = max_period ** (-i / half)`` for ``i < half``:
    ``emb[n, i] = cos(t_n * omega_i)`` and ``emb[n, half + i] = sin(t_n * omega_i)``; an odd
    ``dim`` gets one trailing zero column.

    Args:
        t: ``[N]`` timesteps, int or float, on the scale the caller chose (here about 0..1000).
        dim: embedding width.
        max_period: the longest wavelength, which sets the lowest frequency.

    Returns:
        ``[N, dim]`` float32 embedding (computed in float32 whatever the autocast state; the
        arguments ``t * omega`` reach ~1000, where bf16 would be off by several radians).
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # [half]
    args = t.to(torch.float32)[:, None] * freqs[None]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [N, 2 * half]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32 and returned in the input dtype.

    Under bf16/fp16 autocast the statistics of a low-precision input are unreliable, so the input
    is promoted (bf16 -> fp32, fp64 stays fp64) and the result cast back.
    """

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, C, H, W]
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        return super().forward(x.to(compute_dtype)).to(x.dtype)


def normalization(channels: int, num_groups: int) -> GroupNorm32:
    """GroupNorm with ``num_groups`` groups over ``channels``; ValueError if they do not divide."""
    if num_groups < 1 or channels % num_groups:
        raise ValueError(
            f"GroupNorm needs the channel count to be divisible by num_groups, got "
            f"channels={channels}, num_groups={num_groups}; pick a num_groups that divides "
            f"{channels}."
        )
    return GroupNorm32(num_groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding ``emb`` ``[N, E]``."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential container that passes ``emb`` to the children that are TimestepBlocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W with a 3x3 stride-2 conv: ``[N, C, H, W] -> [N, C, H/2, W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest neighbour, then a 3x3 conv: ``[N, C, H, W] -> [N, C, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding.

    ``h = conv3x3(SiLU(GN(x)))``; then with ``use_scale_shift_norm`` the embedding is projected
    to ``(scale, shift)`` and ``h = GN(h) * (1 + scale) + shift`` (FiLM, the Improved DDPM
    choice), otherwise it is projected to ``C_out`` and added before the norm; then SiLU,
    dropout and a zero-initialised conv3x3. The skip path is a 1x1 conv when the channel count
    changes. With ``up``/``down`` both paths are resampled (nearest / 2x2 average pool, no
    parameters) between the first norm and the first conv, as in the reference code.

    Shapes: ``x [N, C_in, H, W]``, ``emb [N, E]`` -> ``[N, C_out, H', W']`` with ``H' = H``,
    ``2H`` (up) or ``H/2`` (down).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        num_groups: int = 32,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("ResBlock: up and down cannot both be True.")
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.in_norm = normalization(in_channels, num_groups)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_norm = normalization(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(self._resample(h))  # [N, C_out, H', W']
        x = self._resample(x)
        emb_out = self.emb_layers(emb)[:, :, None, None].to(h.dtype)  # [N, C_out or 2C_out, 1, 1]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + emb_out)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


# SDPA runs a fused (flash) kernel only when the last dim of q, k, v has stride 1, and the
# unfused math path otherwise. On the CPU the fused kernel was faster in float32 at every
# length tried (16 to 1024 positions), but in bf16 only from L = 256 (16x16) up. At L <= 196
# it was 1.1-2.4x slower than the math path (forward + backward, torch 2.13, 1 thread of
# an AVX512-BF16 AMD EPYC).
CPU_REDUCED_PRECISION_FUSED_MIN_LENGTH = 256


def _fused_attention_pays(qkv: Tensor, length: int) -> bool:
    """Return whether to lay out ``qkv`` for SDPA's fused kernel (not for short bf16 on CPU)."""
    if qkv.device.type != "cpu" or qkv.dtype == torch.float32:
        return True
    return length >= CPU_REDUCED_PRECISION_FUSED_MIN_LENGTH


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection.

    ``out = x + proj_out(attn(qkv(GN(x))))``. The 1x1 conv ``qkv`` gives ``3C`` channels laid
    out as ``[q | k | v]``, each split into ``heads`` consecutive groups of ``d = C / heads``
    channels. Per head, ``attn = softmax(q^T k / sqrt(d)) v`` over positions, computed by
    ``F.scaled_dot_product_attention``; ``proj_out`` (1x1 conv) starts at zero.

    Heads: ``num_head_channels`` (width per head) wins when given, else ``num_heads``.
    Shapes: ``x [N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        num_head_channels: int | None = None,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if num_head_channels is not None:
            if num_head_channels < 1 or channels % num_head_channels:
                raise ValueError(
                    f"AttentionBlock: channels={channels} is not divisible by "
                    f"num_head_channels={num_head_channels}; pick a width that divides it."
                )
            num_heads = channels // num_head_channels
        elif num_heads < 1 or channels % num_heads:
            raise ValueError(
                f"AttentionBlock: channels={channels} is not divisible by num_heads={num_heads}; "
                f"pick a head count that divides it."
            )
        self.channels = channels
        self.num_heads = num_heads
        self.norm = normalization(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        heads, d = self.num_heads, c // self.num_heads
        length = height * width
        qkv = self.qkv(self.norm(x)).reshape(n, 3 * heads, d, length)
        qkv = qkv.transpose(-1, -2)  # [N, 3 * heads, L, d]: q heads, then k heads, then v heads
        if qkv.stride(-1) != 1 and _fused_attention_pays(qkv, length):
            qkv = qkv.contiguous()  # one copy of [N, 3C, L]; channels_last needs none
        q, k, v = qkv.chunk(3, dim=1)  # each [N, heads, L, d]
        a = F.scaled_dot_product_attention(q, k, v)  # [N, heads, L, d]
        a = a.transpose(-1, -2).reshape(n, c, height, width)
        return x + self.proj_out(a)
