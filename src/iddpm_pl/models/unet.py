"""The UNet of Improved DDPM (Nichol & Dhariwal, 2021; Ho et al., 2020).

The network maps a noisy image and its timestep (and optionally a class label) to ``out_channels``
maps of the same size. It knows nothing about diffusion: the caller chooses ``out_channels``
(twice the image channels when the variance is learned) and scales ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from iddpm_pl.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)

__all__ = ["UNet"]


def _check_config(
    image_size: int,
    model_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attention_resolutions: tuple[int, ...],
    num_heads: int,
    num_head_channels: int | None,
    dropout: float,
    num_classes: int | None,
    num_groups: int,
) -> None:
    """Raise ValueError, naming the values and the fix, for a configuration the UNet cannot build."""
    if not channel_mult or any(m < 1 for m in channel_mult):
        raise ValueError(f"channel_mult={channel_mult} must be a non-empty list of positive ints.")
    if model_channels < 1:
        raise ValueError(f"model_channels={model_channels} must be >= 1.")
    factor = 2 ** (len(channel_mult) - 1)
    if image_size < 1 or image_size % factor:
        raise ValueError(
            f"image_size={image_size} is not divisible by 2**(len(channel_mult)-1)={factor} "
            f"(channel_mult={channel_mult} halves the resolution {len(channel_mult) - 1} times); "
            f"use an image_size that is a multiple of {factor} or fewer levels in channel_mult."
        )
    sizes = [image_size // 2**level for level in range(len(channel_mult))]
    unreached = [r for r in attention_resolutions if r not in sizes]
    if unreached:
        raise ValueError(
            f"attention_resolutions={attention_resolutions} contains {unreached}, never reached: "
            f"with image_size={image_size} and channel_mult={channel_mult} the feature maps are "
            f"{sizes} pixels; use sizes from that list."
        )
    for level, mult in enumerate(channel_mult):
        ch = model_channels * mult
        if num_groups < 1 or ch % num_groups:
            raise ValueError(
                f"channels model_channels*channel_mult[{level}]={model_channels}*{mult}={ch} "
                f"are not divisible by num_groups={num_groups}; choose num_groups dividing "
                f"every model_channels*mult, or change model_channels."
            )
        # The middle block (last level) always has attention.
        if sizes[level] in attention_resolutions or level == len(channel_mult) - 1:
            if num_head_channels is not None:
                if num_head_channels < 1 or ch % num_head_channels:
                    raise ValueError(
                        f"attention at {sizes[level]}px has {ch} channels, not divisible by "
                        f"num_head_channels={num_head_channels}; choose a head width dividing "
                        f"{ch}, or set num_head_channels=None and use num_heads."
                    )
            elif num_heads < 1 or ch % num_heads:
                raise ValueError(
                    f"attention at {sizes[level]}px has {ch} channels, not divisible by "
                    f"num_heads={num_heads}; choose num_heads dividing {ch}, or set "
                    f"num_head_channels."
                )
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks={num_res_blocks} must be >= 1.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must lie in [0, 1).")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1, or None for no conditioning.")


class UNet(nn.Module):
    """Timestep- (and optionally class-) conditioned UNet of Improved DDPM.

    Layout, with ``ch_l = model_channels * channel_mult[l]`` at level ``l`` (feature maps of
    ``image_size / 2**l`` pixels):

    * conv3x3 to ``ch_0`` (the reference code uses ``model_channels`` here; the same when
      ``channel_mult[0] == 1``);
    * encoder: per level, ``num_res_blocks`` ResBlocks to ``ch_l``, each followed by an
      AttentionBlock when the size is in ``attention_resolutions``; then a downsample (strided
      conv, or a ResBlock with ``down`` when ``resblock_updown``) except at the last level;
    * middle: ResBlock, AttentionBlock, ResBlock (attention here whatever the resolution);
    * decoder: per level from the last, ``num_res_blocks + 1`` ResBlocks, each taking the
      concatenation of the running features with one stored encoder output (LIFO), attention as
      in the encoder, then an upsample (nearest + conv, or a ResBlock with ``up``) except at
      level 0;
    * GroupNorm, SiLU, zero-initialised conv3x3 to ``out_channels``: a fresh model outputs 0.

    The timestep embedding is ``MLP(sinusoid(t))`` (SiLU between two linears, width
    ``4 * model_channels``); a learned class embedding is added to it when ``num_classes`` is
    set. Every GroupNorm has ``num_groups`` groups; the constructor raises ValueError when a
    channel count is not divisible by it (no silent ``min(num_groups, channels)``).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        out_channels: int,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        num_heads: int = 4,
        num_head_channels: int | None = None,
        dropout: float = 0.0,
        num_classes: int | None = None,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must be >= 1."
            )
        _check_config(
            image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions,
            num_heads, num_head_channels, dropout, num_classes, num_groups,
        )  # fmt: skip
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.num_classes = num_classes

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_emb = nn.Embedding(num_classes, emb_dim) if num_classes is not None else None

        def res(c_in: int, c_out: int, **updown: bool) -> ResBlock:
            return ResBlock(
                c_in, c_out, emb_dim, dropout, use_scale_shift_norm, num_groups, **updown
            )

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_heads, num_head_channels, num_groups)

        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        skip_channels = [ch]  # channels of every encoder output, consumed LIFO by the decoder
        size = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, model_channels * mult)]
                ch = model_channels * mult
                if size in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                size //= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if size in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch))
                    size *= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch, num_groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict ``out_channels`` maps for a batch.

        Args:
            x: ``[N, in_channels, image_size, image_size]`` noisy images (any memory format).
            t: ``[N]`` timesteps, int or float, already scaled by the caller (about 0..1000).
            y: ``[N]`` int64 class labels in ``[0, num_classes)``; required exactly when the
                model was built with ``num_classes``.

        Returns:
            ``[N, out_channels, image_size, image_size]``.
        """
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [N, {self.in_channels}, "
                f"{self.image_size}, {self.image_size}]."
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected [N] = [{x.shape[0]}].")
        if self.label_emb is None and y is not None:
            raise ValueError("y was given but the model is unconditional (num_classes=None).")
        if self.label_emb is not None and y is None:
            raise ValueError(
                f"the model is class-conditional (num_classes={self.num_classes}); pass y."
            )

        # Sinusoid in float32, then into the MLP's dtype (a no-op unless the model was cast).
        t_emb = timestep_embedding(t, self.model_channels)  # [N, model_channels]
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))  # [N, 4 * mc]
        if self.label_emb is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"y has shape {tuple(y.shape)}; expected [{x.shape[0]}].")
            emb = emb + self.label_emb(y)

        h = x
        skips: list[Tensor] = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
