"""Timestep samplers: uniform, and loss-second-moment importance sampling."""

from __future__ import annotations

import math

import pytest
import torch

from iddpm_pl.diffusion import LossSecondMomentResampler, UniformSampler


def fill(sampler: LossSecondMomentResampler, values: torch.Tensor) -> None:
    """Feed a ``[T, H]`` table of losses, step by step, oldest first."""
    T, H = values.shape
    for k in range(H):
        sampler.update(torch.arange(T), values[:, k])


def test_uniform_weights_are_one():
    sampler = UniformSampler(7)
    t, w = sampler.sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.min().item() >= 0
    assert t.max().item() == 6
    assert torch.all(w == 1)
    assert sampler.entropy() == pytest.approx(math.log(7))


def test_importance_uniform_before_warmup():
    sampler = LossSecondMomentResampler(5)
    fill(sampler, torch.rand(5, 9) + 1)  # one value short of a full history
    sampler.update(torch.tensor([0, 1, 2, 3]), torch.ones(4))
    assert not sampler.warmed_up
    assert sampler.warmup_fraction == pytest.approx(49 / 50)
    torch.testing.assert_close(sampler.weights(), torch.full((5,), 0.2, dtype=torch.float64))
    _, w = sampler.sample(10)
    assert torch.allclose(w, torch.ones(10))


def test_importance_exact_probabilities():
    T, H = 4, 10
    history = torch.arange(1, T * H + 1, dtype=torch.float64).reshape(T, H)
    sampler = LossSecondMomentResampler(T)
    fill(sampler, history)
    assert sampler.warmed_up
    rms = [math.sqrt(sum(v * v for v in row) / H) for row in history.tolist()]
    expected = [0.999 * r / sum(rms) + 0.001 / T for r in rms]
    assert sampler.weights().tolist() == pytest.approx(expected, rel=1e-12)


def test_importance_keeps_last_ten():
    sampler = LossSecondMomentResampler(1)
    for value in range(15):
        sampler.update(torch.tensor([0]), torch.tensor([float(value)]))
    assert sampler.history[0].tolist() == [float(v) for v in range(5, 15)]


def test_importance_probability_floor():
    T = 50
    values = torch.zeros(T, 10, dtype=torch.float64)
    values[0] = 1e6  # one step dominates
    sampler = LossSecondMomentResampler(T)
    fill(sampler, values)
    probs = sampler.weights()
    assert probs.min().item() >= 0.001 / T * (1 - 1e-12)
    assert probs.sum().item() == pytest.approx(1.0)


def test_importance_weighted_sum_is_unbiased():
    T = 30
    gen = torch.Generator().manual_seed(0)
    sampler = LossSecondMomentResampler(T)
    fill(
        sampler,
        torch.rand(T, 10, generator=gen, dtype=torch.float64)
        * torch.logspace(0, 3, T).unsqueeze(1).double(),
    )
    losses = torch.rand(T, generator=gen, dtype=torch.float64)
    probs = sampler.weights()
    weights = 1.0 / (T * probs)
    # E_{t ~ p}[w_t L_t] summed exactly over every t equals the uniform mean of L_t.
    assert (probs * weights * losses).sum().item() == pytest.approx(losses.mean().item(), rel=1e-12)
    t, w = sampler.sample(64, generator=gen)
    torch.testing.assert_close(w, weights[t].float())


def test_importance_state_roundtrip():
    sampler = LossSecondMomentResampler(6)
    fill(sampler, torch.rand(6, 10) + 0.5)
    restored = LossSecondMomentResampler(6)
    restored.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(restored.weights(), sampler.weights())
    a = sampler.sample(20, generator=torch.Generator().manual_seed(1))
    b = restored.sample(20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="T = 6"):
        LossSecondMomentResampler(7).load_state_dict(sampler.state_dict())


def test_importance_rejects_bad_updates():
    sampler = LossSecondMomentResampler(3)
    with pytest.raises(ValueError, match="timestep 3 is outside"):
        sampler.update(torch.tensor([3]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape"):
        sampler.update(torch.tensor([0, 1]), torch.tensor([1.0]))
