"""Respacing: kept steps, recomputed betas, original timesteps seen by the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iddpm_pl.diffusion import create_diffusion, get_named_beta_schedule, space_timesteps


def test_two_step_specs():
    assert space_timesteps(1000, "2") == [0, 999]
    assert space_timesteps(1000, "ddim2") == [0, 500]


def test_sections_evenly_spaced():
    # Three sections of 100 steps; each keeps its count, first and last step included.
    kept = space_timesteps(300, "2,3,1")
    assert kept == [0, 99, 100, 150, 199, 200]
    assert space_timesteps(300, [2, 3, 1]) == kept
    assert space_timesteps(10, "10") == list(range(10))
    assert len(space_timesteps(4000, "50")) == 50


def test_ddim_stride():
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fifty", "invalid respacing spec 'fifty'"),
        ("10,,5", "invalid respacing spec"),
        ("1001", "asks for 1001 steps in section 0, which has only 1000"),
        ("600,500", "asks for 600 steps in section 0, which has only 500"),
        ("0", "at least one step"),
        ("ddim999", "no integer stride gives exactly 999 steps"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        space_timesteps(1000, spec)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_respaced_keeps_alphas_cumprod(schedule):
    T = 200
    full = create_diffusion(schedule, T)
    kept = space_timesteps(T, "17")
    spaced = full.respace("17")
    alpha_bar = np.cumprod(1 - get_named_beta_schedule(schedule, T).numpy())
    assert spaced.num_timesteps == 17
    np.testing.assert_allclose(spaced.alphas_cumprod.numpy(), alpha_bar[kept], rtol=1e-6)
    assert spaced.timestep_map.tolist() == kept


def test_respaced_model_sees_original_steps():
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    spaced = create_diffusion("cosine", 4000).respace("ddim4")
    spaced.p_sample_loop(model, (1, 1, 2, 2))
    # ddim4 of T = 4000 keeps 0, 1000, 2000, 3000; the network sees them scaled to 0..1000.
    assert [s.item() for s in seen] == pytest.approx([750.0, 500.0, 250.0, 0.0])


def test_respace_of_respaced_composes():
    full = create_diffusion("cosine", 100)
    twice = full.respace("50").respace("5")
    once_map = full.respace("50").timestep_map
    assert twice.timestep_map.tolist() == once_map[space_timesteps(50, "5")].tolist()
    np.testing.assert_allclose(
        twice.alphas_cumprod.numpy(), full.alphas_cumprod[twice.timestep_map].numpy(), rtol=1e-5
    )
