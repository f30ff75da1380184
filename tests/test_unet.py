"""Tests of the Improved DDPM UNet and its layers (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from iddpm_pl.models import UNet
from iddpm_pl.models.layers import AttentionBlock, ResBlock, timestep_embedding

# The project's configs (digits 8x8x1) and a small RGB one that exercises 3 levels at 16x16.
DIGITS = dict(
    image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
    attention_resolutions=(4,), num_heads=4, num_groups=8,
)  # fmt: skip
SMALL_RGB = dict(
    image_size=16, in_channels=3, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
    attention_resolutions=(8, 4), num_heads=2, num_groups=8,
)  # fmt: skip


def make(cfg: dict, out_channels: int | None = None, **overrides) -> UNet:
    out = cfg["in_channels"] if out_channels is None else out_channels
    return UNet(**{**cfg, **overrides}, out_channels=out)


@torch.no_grad()
def perturb(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    """Add noise to every parameter, so the zero-initialised layers stop hiding the rest."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(std * torch.randn(p.shape, generator=gen))


def batch(cfg: dict, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = cfg["image_size"]
    x = torch.randn(n, cfg["in_channels"], size, size, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    return x, t


# ----------------------------------------------------------------------------- shapes and init


@pytest.mark.parametrize("cfg", [DIGITS, SMALL_RGB], ids=["digits", "rgb"])
@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize(
    "variant",
    [{}, {"resblock_updown": True}, {"use_scale_shift_norm": False}, {"num_head_channels": 8}],
    ids=["default", "updown", "additive", "head_channels"],
)
def test_output_shape(cfg: dict, learned_variance: bool, variant: dict) -> None:
    out = cfg["in_channels"] * (2 if learned_variance else 1)
    model = make(cfg, out, **variant)
    x, t = batch(cfg)
    assert model(x, t).shape == (3, out, cfg["image_size"], cfg["image_size"])


def test_cifar_config_shape() -> None:
    model = UNet(image_size=32, in_channels=3, out_channels=6)  # the defaults are the CIFAR net
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x, torch.tensor([0, 999])).shape == (2, 6, 32, 32)


@pytest.mark.parametrize("cfg", [DIGITS, SMALL_RGB], ids=["digits", "rgb"])
def test_fresh_model_outputs_exactly_zero(cfg: dict) -> None:
    model = make(cfg, 2 * cfg["in_channels"])
    x, t = batch(cfg)
    assert torch.equal(model(x, t), torch.zeros(3, 2 * cfg["in_channels"], *x.shape[2:]))


def test_int_and_float_timesteps_agree() -> None:
    model = make(DIGITS)
    perturb(model)
    x, t = batch(DIGITS)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model(x, t.float()))


def test_channels_last_matches_contiguous() -> None:
    model = make(SMALL_RGB, 6)
    perturb(model)
    x, t = batch(SMALL_RGB)
    with torch.no_grad():
        ref = model(x, t)
        out = model.to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last), t
        )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- conditioning


def test_class_conditioning_changes_output() -> None:
    model = make(DIGITS, num_classes=10)
    x, t = batch(DIGITS)
    y0, y1 = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model(x, t, y0), model(x, t, y1))  # both exactly zero at init
        perturb(model)
        assert not torch.allclose(model(x, t, y0), model(x, t, y1), atol=1e-4)


def test_y_errors() -> None:
    x, t = batch(DIGITS)
    with pytest.raises(ValueError, match="unconditional"):
        make(DIGITS)(x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=10\); pass y"):
        make(DIGITS, num_classes=10)(x, t)


def test_input_shape_errors() -> None:
    model = make(DIGITS)
    x, t = batch(DIGITS)
    with pytest.raises(ValueError, match=r"expected \[N, 1, 8, 8\]"):
        model(torch.randn(3, 1, 16, 16), t)
    with pytest.raises(ValueError, match=r"t has shape \(2,\)"):
        model(x, t[:2])


# ----------------------------------------------------------------------------- construction errors


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"image_size": 10}, r"image_size=10 is not divisible by 2\*\*\(len\(channel_mult\)-1\)=4"),
        ({"attention_resolutions": (3,)}, r"contains \[3\], never reached.*\[8, 4, 2\]"),
        ({"attention_resolutions": (16,)}, r"contains \[16\], never reached"),
        ({"num_groups": 12}, r"model_channels\*channel_mult\[0\]=32\*1=32.*num_groups=12"),
        (
            {"model_channels": 24, "channel_mult": (2, 3), "num_groups": 16},
            r"channel_mult\[1\]=24\*3=72 are not divisible by num_groups=16",
        ),
        ({"num_heads": 3}, r"4px has 64 channels, not divisible by num_heads=3"),
        ({"num_head_channels": 24}, r"64 channels, not divisible by num_head_channels=24"),
        ({"num_res_blocks": 0}, r"num_res_blocks=0 must be >= 1"),
        ({"dropout": 1.0}, r"dropout=1.0 must lie in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout=-0.1 must lie in \[0, 1\)"),
        ({"num_classes": 0}, r"num_classes=0 must be >= 1"),
    ],
)
def test_construction_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(DIGITS, **overrides)


# ----------------------------------------------------------------------------- gradients


def test_gradients_reach_every_parameter() -> None:
    model = make(SMALL_RGB, 6, num_classes=4, resblock_updown=True, dropout=0.1)
    perturb(model)
    x, t = batch(SMALL_RGB)
    model(x, t, torch.tensor([0, 1, 3])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient reached: {missing}"


# ----------------------------------------------------------------------------- layer math


@pytest.mark.parametrize("head_kwargs", [{"num_heads": 4}, {"num_head_channels": 16}])
def test_attention_matches_brute_force_float64(head_kwargs: dict) -> None:
    channels, groups = 32, 8
    block = AttentionBlock(channels, num_groups=groups, **head_kwargs)
    perturb(block, std=0.2)
    heads = block.num_heads
    d = channels // heads
    x = torch.randn(2, channels, 3, 5)  # H != W catches a transposed flattening
    with torch.no_grad():
        out = block(x)

    # Brute force in float64: q, k, v are channel slices [q | k | v] of the 1x1 conv, each split
    # into `heads` consecutive groups of d channels.
    xd = x.double()
    p = {k: v.detach().double() for k, v in block.state_dict().items()}
    h = F.group_norm(xd, groups, p["norm.weight"], p["norm.bias"], eps=block.norm.eps)
    qkv = torch.einsum("oc,nchw->nohw", p["qkv.weight"][:, :, 0, 0], h)
    qkv = qkv + p["qkv.bias"][None, :, None, None]
    n, length = x.shape[0], x.shape[2] * x.shape[3]
    q, k, v = (
        qkv[:, i * channels : (i + 1) * channels].reshape(n, heads, d, length) for i in range(3)
    )
    scores = torch.einsum("nhdi,nhdj->nhij", q, k) / math.sqrt(d)  # [N, heads, L, L]
    a = torch.einsum("nhij,nhdj->nhdi", torch.softmax(scores, dim=-1), v).reshape(x.shape)
    proj = torch.einsum("oc,nchw->nohw", p["proj_out.weight"][:, :, 0, 0], a)
    expected = xd + proj + p["proj_out.bias"][None, :, None, None]
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [32, 64, 33])
def test_timestep_embedding_closed_form(dim: int) -> None:
    t = torch.tensor([0, 1, 7, 250, 999])
    t_frac = torch.tensor([0.0, 0.5, 123.25, 999.9])
    for ts in (t, t_frac):
        emb = timestep_embedding(ts, dim)
        half = dim // 2
        i = torch.arange(half, dtype=torch.float64)
        omega = 10000.0 ** (-i / half)
        args = ts.double()[:, None] * omega[None]
        expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        if dim % 2:
            expected = torch.cat([expected, torch.zeros(len(ts), 1, dtype=torch.float64)], dim=1)
        assert emb.shape == (len(ts), dim) and emb.dtype == torch.float32
        # float32 arguments near 1000 carry ~3e-5 rad of rounding; 1e-4 leaves a margin.
        torch.testing.assert_close(emb.double(), expected, rtol=0, atol=1e-4)


def test_resblock_identity_at_init_and_skip_conv() -> None:
    emb = torch.randn(2, 64)
    x = torch.randn(2, 32, 4, 4)
    same = ResBlock(32, 32, 64, num_groups=8)
    assert torch.equal(same(x, emb), x)  # zero-initialised second conv, identity skip
    wider = ResBlock(32, 48, 64, num_groups=8)
    assert isinstance(wider.skip, torch.nn.Conv2d) and wider.skip.kernel_size == (1, 1)
    torch.testing.assert_close(wider(x, emb), wider.skip(x))


# ----------------------------------------------------------------------------- precision, compile


def test_bf16_autocast_close_to_fp32() -> None:
    model = make(DIGITS, 2, num_classes=10)
    perturb(model)
    x, t = batch(DIGITS, n=4)
    y = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3g}"


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    model = make(DIGITS, 2, num_classes=10)
    perturb(model)
    x, t = batch(DIGITS, n=4)
    y = torch.tensor([0, 3, 5, 9])
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), rtol=1e-4, atol=1e-5)
