"""Numerics of the diffusion core, checked against values derived independently in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iddpm_pl.diffusion import (
    GaussianDiffusion,
    LossType,
    MeanType,
    VarianceType,
    create_diffusion,
    discretized_gaussian_log_likelihood,
    get_named_beta_schedule,
    normal_kl,
)


def np_cosine_alpha_bar(num_timesteps: int) -> np.ndarray:
    """alpha_bar_t = f(t) / f(0) for t = 0..T, f(t) = cos^2(((t/T + s) / (1 + s)) pi / 2)."""
    s = 0.008
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    return f / f[0]


def np_schedule(name: str, num_timesteps: int) -> dict[str, np.ndarray]:
    betas = get_named_beta_schedule(name, num_timesteps).numpy()
    alphas = 1.0 - betas
    alpha_bar = np.cumprod(alphas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    return {
        "betas": betas,
        "alphas": alphas,
        "alpha_bar": alpha_bar,
        "alpha_bar_prev": alpha_bar_prev,
    }


def normal_cdf64(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("num_timesteps", [1000, 4000])
def test_cosine_alpha_bar_matches_closed_form(num_timesteps):
    betas = get_named_beta_schedule("cosine", num_timesteps).numpy()
    expected = np_cosine_alpha_bar(num_timesteps)[1:]
    unclipped = betas < 0.999
    assert betas.dtype == np.float64
    assert np.abs(np.cumprod(1 - betas)[unclipped] - expected[unclipped]).max() < 1e-12
    assert betas.max() <= 0.999


@pytest.mark.parametrize(
    ("num_timesteps", "first", "last"), [(1000, 1e-4, 0.02), (4000, 2.5e-5, 0.005)]
)
def test_linear_endpoints(num_timesteps, first, last):
    betas = get_named_beta_schedule("linear", num_timesteps)
    assert betas.shape == (num_timesteps,)
    assert betas[0].item() == pytest.approx(first, rel=1e-12)
    assert betas[-1].item() == pytest.approx(last, rel=1e-12)


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'.*linear, cosine"):
        get_named_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        get_named_beta_schedule("cosine", 0)
    with pytest.raises(ValueError, match="linear schedule needs T > 20"):
        get_named_beta_schedule("linear", 20)


def test_buffers_follow_module_and_state_dict():
    diffusion = create_diffusion("cosine", 10)
    state = diffusion.state_dict()
    assert "alphas_cumprod" in state
    assert state["betas"].dtype == torch.float32
    assert diffusion.double().betas.dtype == torch.float64


# ---------------------------------------------------------------- posterior and reverse process


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_is_bayes_product(schedule):
    T = 50
    sched = np_schedule(schedule, T)
    diffusion = create_diffusion(schedule, T, variance_type="fixed_small")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 2, 3, 3, generator=gen) * 2 - 1
    xt = torch.randn(6, 2, 3, 3, generator=gen)
    t = torch.tensor([1, 2, 10, 25, 48, 49])
    post = diffusion.q_posterior_mean_variance(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        # q(x_{t-1} | x_0) = N(sqrt(ab_prev) x0, 1 - ab_prev); q(x_t | x_{t-1}) = N(sqrt(a) x_{t-1}, beta)
        ab_prev, alpha, beta = (
            sched["alpha_bar_prev"][step],
            sched["alphas"][step],
            sched["betas"][step],
        )
        precision = 1.0 / (1.0 - ab_prev) + alpha / beta
        variance = 1.0 / precision
        mean = variance * (
            math.sqrt(ab_prev) * x0[i].double().numpy() / (1.0 - ab_prev)
            + math.sqrt(alpha) * xt[i].double().numpy() / beta
        )
        np.testing.assert_allclose(post.mean[i].numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(post.variance[i].numpy(), variance, rtol=1e-5)


def test_first_step_log_variance_uses_second_step():
    T = 20
    sched = np_schedule("cosine", T)
    beta_tilde_1 = sched["betas"][1] * (1 - sched["alpha_bar"][0]) / (1 - sched["alpha_bar"][1])
    x = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([0])
    small = create_diffusion("cosine", T, variance_type="fixed_small")
    large = create_diffusion("cosine", T, variance_type="fixed_large")
    out = torch.zeros(1, 1, 2, 2)
    for diffusion in (small, large):
        stats = diffusion.p_mean_variance_from_output(out, x, t, clip_denoised=False)
        assert stats.log_variance[0, 0, 0, 0].item() == pytest.approx(
            math.log(beta_tilde_1), rel=1e-5
        )
    later = large.p_mean_variance_from_output(out, x, torch.tensor([5]), clip_denoised=False)
    assert later.log_variance[0, 0, 0, 0].item() == pytest.approx(
        math.log(sched["betas"][5]), rel=1e-5
    )


@pytest.mark.parametrize(("raw", "kind"), [(-1.0, "beta_tilde"), (0.0, "geometric"), (1.0, "beta")])
def test_learned_range_interpolates_in_log_space(raw, kind):
    T = 30
    sched = np_schedule("linear", T)
    step = 7
    beta = sched["betas"][step]
    beta_tilde = beta * (1 - sched["alpha_bar_prev"][step]) / (1 - sched["alpha_bar"][step])
    expected = {"beta_tilde": beta_tilde, "geometric": math.sqrt(beta * beta_tilde), "beta": beta}[
        kind
    ]
    diffusion = create_diffusion("linear", T, variance_type="learned_range")
    x = torch.zeros(1, 1, 2, 2)
    out = torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), raw)], dim=1)
    stats = diffusion.p_mean_variance_from_output(out, x, torch.tensor([step]), clip_denoised=False)
    assert stats.variance[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_learned_range_is_not_clamped():
    diffusion = create_diffusion("linear", 30, variance_type="learned_range")
    x = torch.zeros(1, 1, 1, 1)
    t = torch.tensor([7])
    stats = [
        diffusion.p_mean_variance_from_output(torch.tensor([[[[0.0]], [[raw]]]]), x, t, False)
        for raw in (1.0, 3.0)
    ]
    assert stats[1].log_variance.item() > stats[0].log_variance.item()


@pytest.mark.parametrize("mean_type", ["epsilon", "x0", "previous_x"])
def test_reverse_mean_matches_direct_formula(mean_type):
    T = 40
    sched = np_schedule("cosine", T)
    diffusion = create_diffusion("cosine", T, mean_type=mean_type, variance_type="fixed_small")
    gen = torch.Generator().manual_seed(1)
    xt = torch.randn(3, 1, 4, 4, generator=gen)
    out = torch.randn(3, 1, 4, 4, generator=gen)
    t = torch.tensor([3, 17, 39])
    stats = diffusion.p_mean_variance_from_output(out, xt, t, clip_denoised=False)
    for i, step in enumerate(t.tolist()):
        x, o = xt[i].double().numpy(), out[i].double().numpy()
        a, ab, ab_prev, beta = (
            sched[k][step] for k in ("alphas", "alpha_bar", "alpha_bar_prev", "betas")
        )
        if mean_type == "epsilon":
            expected = (x - beta / math.sqrt(1 - ab) * o) / math.sqrt(a)
        elif mean_type == "x0":
            expected = (math.sqrt(ab_prev) * beta * o + math.sqrt(a) * (1 - ab_prev) * x) / (1 - ab)
        else:
            expected = o
        np.testing.assert_allclose(stats.mean[i].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_model_sees_timesteps_scaled_to_1000():
    seen = {}

    def model(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    diffusion = create_diffusion("linear", 4000, variance_type="fixed_small", loss_type="simple")
    diffusion.training_losses(model, torch.zeros(2, 1, 2, 2), torch.tensor([0, 3999]))
    assert seen["t"].tolist() == pytest.approx([0.0, 999.75])

    raw = GaussianDiffusion(get_named_beta_schedule("cosine", 10), timestep_range=None)
    raw.training_losses(model, torch.zeros(1, 1, 2, 2), torch.tensor([7]))
    assert seen["t"].tolist() == [7]


# ---------------------------------------------------------------- likelihood


@pytest.mark.parametrize(
    ("mean", "log_scale"), [(0.0, -3.0), (0.7, -1.0), (-0.99, -5.0), (0.2, 1.0)]
)
def test_discretized_bins_sum_to_one(mean, log_scale):
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0
    logp = discretized_gaussian_log_likelihood(levels, torch.tensor(mean), torch.tensor(log_scale))
    assert logp.exp().double().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_discretized_bins_match_erf():
    mean, scale = 0.1, 0.05
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0
    logp = discretized_gaussian_log_likelihood(
        levels, torch.tensor(mean), torch.tensor(math.log(scale))
    )
    for k in (0, 1, 140, 141, 254, 255):
        x = levels[k].item()
        upper = 1.0 if k == 255 else normal_cdf64((x + 1 / 255 - mean) / scale)
        lower = 0.0 if k == 0 else normal_cdf64((x - 1 / 255 - mean) / scale)
        # Tail bins far from the mean are floored at probability 1e-12.
        expected = math.log(max(upper - lower, 1e-12))
        assert logp[k].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_normal_kl_zero_and_closed_form():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 2.0
    same = normal_kl(
        torch.tensor(m1), torch.tensor(math.log(v1)), torch.tensor(m1), torch.tensor(math.log(v1))
    )
    assert same.item() == pytest.approx(0.0, abs=1e-7)
    # KL(N1 || N2) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    expected = math.log(math.sqrt(v2) / math.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    got = normal_kl(
        torch.tensor(m1), torch.tensor(math.log(v1)), torch.tensor(m2), torch.tensor(math.log(v2))
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_likelihood_runs_in_float32_under_autocast():
    diffusion = create_diffusion("cosine", 20)

    def model(x, t):
        return torch.nn.functional.conv2d(torch.cat([x, x], 1), torch.eye(2).reshape(2, 2, 1, 1))

    x = torch.rand(4, 1, 4, 4) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = diffusion.training_losses(model, x, torch.tensor([0, 1, 5, 19]))
    assert losses["vb"].dtype == torch.float32
    assert losses["loss"].dtype == torch.float32


def _oracle_eps_model(x0: torch.Tensor, alpha_bar: np.ndarray):
    """Return a network built on x0 that outputs the exact eps (it expects raw chain indices).

    A batch of several steps stacks them step by step, so x0 is tiled to the batch.
    """

    def model(x_t, t):
        ab = torch.tensor(alpha_bar, dtype=torch.float64)[t].reshape(-1, 1, 1, 1)
        x0_batch = x0.repeat(x_t.shape[0] // x0.shape[0], 1, 1, 1).double()
        return ((x_t.double() - ab.sqrt() * x0_batch) / (1 - ab).sqrt()).float()

    return model


@pytest.mark.parametrize("steps_per_call", [1, 3, 4])
def test_bpd_loop_with_true_posterior_is_analytic(steps_per_call):
    T = 4
    sched = np_schedule("cosine", T)
    diffusion = GaussianDiffusion(
        get_named_beta_schedule("cosine", T), variance_type="fixed_small", timestep_range=None
    )
    levels = torch.tensor([0, 1, 100, 200, 255])
    x0 = (levels.float() / 127.5 - 1.0).reshape(5, 1, 1, 1)
    out = diffusion.calc_bpd_loop(
        _oracle_eps_model(x0, sched["alpha_bar"]),
        x0,
        clip_denoised=False,
        steps_per_call=steps_per_call,
    )

    beta_tilde_1 = sched["betas"][1] * (1 - sched["alpha_bar"][0]) / (1 - sched["alpha_bar"][1])
    sigma = math.sqrt(beta_tilde_1)
    ab_T = sched["alpha_bar"][-1]
    for i, level in enumerate(levels.tolist()):
        upper = 1.0 if level == 255 else normal_cdf64(1 / 255 / sigma)
        lower = 0.0 if level == 0 else normal_cdf64(-1 / 255 / sigma)
        decoder_bits = -math.log(upper - lower) / math.log(2)
        m = math.sqrt(ab_T) * x0[i].item()
        prior_bits = (0.5 * (-1 - math.log(1 - ab_T) + (1 - ab_T) + m * m)) / math.log(2)
        assert out["vb"][i, 0].item() == pytest.approx(decoder_bits, rel=1e-4, abs=1e-6)
        assert out["vb"][i, 1:].abs().max().item() < 1e-4
        assert out["prior_bpd"][i].item() == pytest.approx(prior_bits, rel=1e-4, abs=1e-7)
        assert out["total_bpd"][i].item() == pytest.approx(
            decoder_bits + prior_bits, rel=1e-4, abs=1e-4
        )


@pytest.mark.parametrize("steps", [None, "4"])
def test_bpd_loop_steps_per_call_same_terms(steps):
    diffusion = create_diffusion("cosine", 10, variance_type="learned_range")
    if steps is not None:
        diffusion = diffusion.respace(steps)
    weight = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    seen_t = []

    def model(x, t, y):
        seen_t.append(t.clone())
        out = torch.tanh(torch.nn.functional.conv2d(x, weight, padding=1))
        return out + (t.float() / 1000 + y.float() / 10).reshape(-1, 1, 1, 1)

    x0 = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y = torch.tensor([0, 4, 9])
    results = {}
    for k in (1, 3, diffusion.num_timesteps):
        seen_t.clear()
        results[k] = diffusion.calc_bpd_loop(
            model,
            x0,
            model_kwargs={"y": y},
            generator=torch.Generator().manual_seed(0),
            steps_per_call=k,
        )
        assert len(seen_t) == math.ceil(diffusion.num_timesteps / k)
    for k in (3, diffusion.num_timesteps):
        for key in ("vb", "xstart_mse", "mse", "total_bpd"):
            torch.testing.assert_close(results[k][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_bpd_loop_rejects_zero_steps_per_call():
    diffusion = create_diffusion("cosine", 5)
    with pytest.raises(ValueError, match="steps_per_call must be at least 1, got 0"):
        diffusion.calc_bpd_loop(lambda x, t: x, torch.zeros(2, 1, 2, 2), steps_per_call=0)


def test_bpd_loop_raises_on_non_finite():
    diffusion = create_diffusion("cosine", 5, variance_type="learned")

    def model(x, t):
        return torch.cat([torch.zeros_like(x), torch.full_like(x, float("nan"))], 1)

    with pytest.raises(FloatingPointError, match="not finite at chain indices"):
        diffusion.calc_bpd_loop(model, torch.zeros(2, 1, 2, 2))


# ---------------------------------------------------------------- losses


def test_hybrid_gradients_split_mean_and_variance():
    T = 100
    diffusion = create_diffusion("cosine", T, variance_type="learned_range", loss_type="hybrid")
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 1, 4, 4, generator=gen) * 2 - 1
    output = (0.3 * torch.randn(4, 2, 4, 4, generator=gen)).requires_grad_()
    t = torch.tensor([0, 10, 50, 99])
    losses = diffusion.training_losses(
        lambda x, s: output * 1.0, x0, t, noise=torch.randn(4, 1, 4, 4, generator=gen)
    )

    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), output, retain_graph=True)
    (grad_loss,) = torch.autograd.grad(losses["loss"].sum(), output)
    assert grad_mse[:, 1:].abs().max().item() == 0.0
    assert grad_mse[:, :1].abs().max().item() > 0.0
    # Total gradient on the mean channels is exactly the MSE gradient: vb adds nothing there.
    torch.testing.assert_close(grad_loss[:, :1], grad_mse[:, :1])
    assert grad_loss[:, 1:].abs().max().item() > 0.0


def test_loss_types_combine_mse_and_vb():
    T = 4000
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    noise = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 100, 3999])
    out = torch.randn(3, 2, 4, 4)
    results = {}
    for loss_type in LossType:
        diffusion = create_diffusion(
            "cosine", T, variance_type="learned_range", loss_type=loss_type
        )
        results[loss_type] = diffusion.training_losses(lambda x, s: out, x0, t, noise=noise)
    simple, hybrid, vlb = results[LossType.SIMPLE], results[LossType.HYBRID], results[LossType.VLB]
    torch.testing.assert_close(simple["loss"], simple["mse"])
    torch.testing.assert_close(hybrid["loss"], hybrid["mse"] + 4.0 * hybrid["vb"])
    torch.testing.assert_close(vlb["loss"], T * vlb["vb"])
    torch.testing.assert_close(simple["vb"], vlb["vb"])
    torch.testing.assert_close(simple["mse"], ((noise - out[:, :1]) ** 2).mean(dim=(1, 2, 3)))


def test_vb_is_kl_to_true_posterior():
    T = 30
    sched = np_schedule("linear", T)
    diffusion = create_diffusion("linear", T, variance_type="learned", loss_type="vlb")
    x0 = torch.full((1, 1, 1, 1), 0.5)
    noise = torch.full((1, 1, 1, 1), -0.3)
    step = 12
    eps_hat, log_var_hat = 0.1, -4.0
    out = torch.tensor([[[[eps_hat]], [[log_var_hat]]]])
    vb = diffusion.training_losses(lambda x, s: out, x0, torch.tensor([step]), noise=noise)[
        "vb"
    ].item()

    a, ab, ab_prev, beta = (
        sched[k][step] for k in ("alphas", "alpha_bar", "alpha_bar_prev", "betas")
    )
    xt = math.sqrt(ab) * 0.5 + math.sqrt(1 - ab) * -0.3
    true_var = beta * (1 - ab_prev) / (1 - ab)
    true_mean = (math.sqrt(ab_prev) * beta * 0.5 + math.sqrt(a) * (1 - ab_prev) * xt) / (1 - ab)
    model_mean = (xt - beta / math.sqrt(1 - ab) * eps_hat) / math.sqrt(a)
    model_var = math.exp(log_var_hat)
    kl = 0.5 * (
        math.log(model_var / true_var) + (true_var + (true_mean - model_mean) ** 2) / model_var - 1
    )
    assert vb == pytest.approx(kl / math.log(2), rel=1e-4)


# ---------------------------------------------------------------- bad input


def test_option_errors_list_choices():
    betas = get_named_beta_schedule("cosine", 10)
    with pytest.raises(ValueError, match="unknown variance type 'learnt'.*learned_range"):
        GaussianDiffusion(betas, variance_type="learnt")
    with pytest.raises(ValueError, match="unknown mean type 'noise'.*epsilon, x0, previous_x"):
        GaussianDiffusion(betas, mean_type="noise")
    with pytest.raises(ValueError, match="unknown loss type 'kl'.*simple, hybrid, vlb"):
        GaussianDiffusion(betas, loss_type="kl")
    assert (
        GaussianDiffusion(betas, variance_type="fixed_large").variance_type
        is VarianceType.FIXED_LARGE
    )
    assert GaussianDiffusion(betas, mean_type=MeanType.START_X).mean_type is MeanType.START_X


def test_wrong_output_channels_rejected():
    diffusion = create_diffusion("cosine", 10, variance_type="learned_range")
    with pytest.raises(ValueError, match=r"expected \[2, 2, 4, 4\].*2C channels"):
        diffusion.training_losses(
            lambda x, t: torch.zeros_like(x), torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])
        )


def test_out_of_range_timesteps_rejected():
    diffusion = create_diffusion("cosine", 10, variance_type="fixed_small")
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"\[0, 9\].*got values in \[0, 10\]"):
        diffusion.training_losses(model, torch.zeros(2, 1, 4, 4), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="int64"):
        diffusion.training_losses(model, torch.zeros(1, 1, 4, 4), torch.tensor([0.5]))
