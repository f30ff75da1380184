"""Ancestral and DDIM sampling loops."""

from __future__ import annotations

import pytest
import torch

from iddpm_pl.diffusion import create_diffusion


class Linear(torch.nn.Module):
    """A tiny deterministic network: a 1x1 conv to twice the channels."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 2 * channels, 1)
        torch.nn.init.constant_(self.conv.weight, 0.1)
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x, t):
        return self.conv(x) * torch.tanh(t.float() / 1000).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("method", ["p_sample_loop", "ddim_sample_loop"])
def test_generator_makes_sampling_reproducible(method):
    diffusion = create_diffusion("cosine", 50).respace("10")
    model = Linear()
    draw = getattr(diffusion, method)
    a = draw(model, (3, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    b = draw(model, (3, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    c = draw(model, (3, 1, 4, 4), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max().item() <= 1.0 + 1e-6


def test_ddim_eta_zero_is_deterministic_given_noise():
    diffusion = create_diffusion("cosine", 40)
    model = Linear()
    noise = torch.randn(2, 1, 4, 4)
    a = diffusion.ddim_sample_loop(
        model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(0)
    )
    b = diffusion.ddim_sample_loop(
        model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a, b)
    c = diffusion.ddim_sample_loop(
        model, noise.shape, noise=noise, eta=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.equal(a, c)


def test_progressive_yields_pred_xstart_every_step():
    diffusion = create_diffusion("cosine", 40).respace("ddim8")
    steps = list(diffusion.p_sample_loop_progressive(Linear(), (2, 1, 4, 4)))
    assert len(steps) == 8
    assert [s["t"][0].item() for s in steps] == list(range(7, -1, -1))
    assert steps[-1]["pred_xstart"].shape == (2, 1, 4, 4)


def test_last_step_adds_no_noise():
    diffusion = create_diffusion("cosine", 10)
    x = torch.randn(2, 1, 4, 4)
    t = torch.zeros(2, dtype=torch.int64)
    a = diffusion.p_sample(Linear(), x, t, generator=torch.Generator().manual_seed(0))
    b = diffusion.p_sample(Linear(), x, t, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["sample"], b["sample"])


def test_noise_shape_checked():
    diffusion = create_diffusion("cosine", 10)
    with pytest.raises(ValueError, match="noise has shape"):
        diffusion.p_sample_loop(Linear(), (2, 1, 4, 4), noise=torch.zeros(1, 1, 4, 4))
