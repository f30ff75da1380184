"""The notebook helpers of ``iddpm_pl.analysis``, on cases with known results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from iddpm_pl import analysis
from iddpm_pl.diffusion import (
    GaussianDiffusion,
    LossSecondMomentResampler,
    UniformSampler,
    create_diffusion,
    get_named_beta_schedule,
)


class TinyNet(nn.Module):
    """A deterministic 1x1 conv to ``out_channels``, scaled by a function of t."""

    def __init__(self, channels: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 1)
        nn.init.constant_(self.conv.weight, 0.1)
        nn.init.constant_(self.conv.bias, 0.05)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.tanh(t.float() / 1000 + 0.1).reshape(-1, 1, 1, 1)


class CallCounter(nn.Module):
    """Count the forward calls of a wrapped network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x, t)


def warmed_resampler(losses: torch.Tensor, uniform_prob: float = 0.0) -> LossSecondMomentResampler:
    """A resampler whose history contains ``losses`` ``[T]`` ten times, so p_t ~ |losses|."""
    sampler = LossSecondMomentResampler(losses.numel(), uniform_prob=uniform_prob)
    for _ in range(sampler.history_per_term):
        sampler.update(torch.arange(losses.numel()), losses)
    return sampler


# ---------------------------------------------------------------------- estimator_stats


def test_stats_match_numpy():
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(40, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    theta = nn.Parameter(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    stats = analysis.estimator_stats(lambda k: (theta * draws[k]).sum(), [theta], 40)
    z = draws.numpy()
    assert stats.num_draws == 40
    assert stats.grad_trace_covariance == pytest.approx(z.var(axis=0, ddof=1).sum(), rel=1e-10)
    assert stats.loss_variance == pytest.approx((z @ theta.detach().numpy()).var(ddof=1), rel=1e-10)
    assert stats.loss_mean == pytest.approx((z @ theta.detach().numpy()).mean(), rel=1e-10)
    assert stats.grad_mean_sq_norm == pytest.approx((z.mean(axis=0) ** 2).sum(), rel=1e-10)


def test_stats_small_noise_on_large_gradient():
    # Gradients 1e6 + 1e-3 * z: a plain sum-of-squares variance in float32 would lose it.
    noise = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64)
    theta = nn.Parameter(torch.zeros((), dtype=torch.float64))
    stats = analysis.estimator_stats(lambda k: theta * (1e6 + 1e-3 * noise[k]), [theta], 4)
    assert stats.grad_trace_covariance == pytest.approx(1e-6 * noise.numpy().var(ddof=1), rel=1e-6)


def test_stats_unused_parameter_counts_as_zero():
    used = nn.Parameter(torch.ones(2))
    unused = nn.Parameter(torch.ones(3))
    stats = analysis.estimator_stats(lambda k: used.sum() * (k + 1), [used, unused], 3)
    # gradient (k + 1) * [1, 1] for k = 0, 1, 2: per-entry variance 1, two entries.
    assert stats.grad_trace_covariance == pytest.approx(2.0)
    assert stats.grad_mean_sq_norm == pytest.approx(8.0)


def test_stats_need_two_draws():
    theta = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="at least 2"):
        analysis.estimator_stats(lambda k: theta.sum(), [theta], 1)


def test_importance_removes_variance_of_deterministic_terms():
    # L_t = c_t exactly: T * c_t * w_t with p_t = c_t / sum(c) is sum(c) for every draw,
    # while uniform t gives variance T^2 Var_t(c) (population variance over t).
    c = torch.tensor([8.0, 2.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    T = c.numel()
    scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def stats_for(sampler, draws):
        gen = torch.Generator().manual_seed(1)

        def estimate(_):
            t, w = sampler.sample(1, generator=gen)
            return scale * (T * c[t] * w.double()).sum()

        return analysis.estimator_stats(estimate, [scale], draws)

    importance = stats_for(warmed_resampler(c), 200)
    uniform = stats_for(UniformSampler(T), 20000)
    expected_uniform = T**2 * c.numpy().var()
    assert importance.loss_mean == pytest.approx(float(c.sum()), rel=1e-6)
    assert importance.loss_variance < 1e-10
    assert importance.grad_trace_covariance < 1e-10
    assert uniform.loss_variance == pytest.approx(expected_uniform, rel=0.05)
    assert uniform.grad_trace_covariance == pytest.approx(expected_uniform, rel=0.05)
    assert uniform.loss_mean == pytest.approx(float(c.sum()), rel=0.05)


# ---------------------------------------------------------------------- L_vlb estimates


def test_vlb_terms_match_vlb_training_loss():
    diffusion = create_diffusion("cosine", 20, variance_type="learned_range", loss_type="vlb")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 4, 4, generator=gen) * 2 - 1
    t = torch.tensor([0, 3, 10, 19])
    noise = torch.randn(x.shape, generator=gen)
    net = TinyNet()
    terms = analysis.vlb_terms(diffusion, net, x, t, noise)
    reference = diffusion.training_losses(net, x, t, noise)["loss"] / 20
    torch.testing.assert_close(terms, reference)


def test_vlb_terms_reach_mean_channels_under_hybrid():
    # The hybrid loss detaches the mean inside L_t, but the L_vlb estimate must not.
    diffusion = create_diffusion("cosine", 20, variance_type="learned_range", loss_type="hybrid")
    net = TinyNet()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    terms = analysis.vlb_terms(diffusion, net, x, torch.tensor([5, 6]), torch.randn_like(x))
    terms.sum().backward()
    assert net.conv.weight.grad[0].abs().sum() > 0  # mean channel
    assert net.conv.weight.grad[1].abs().sum() > 0  # variance channel


@pytest.mark.parametrize("kind", ["uniform", "importance"])
def test_vlb_gradient_mean_is_unbiased(kind):
    T = 10
    diffusion = create_diffusion("cosine", T, variance_type="learned_range", loss_type="vlb")
    net = TinyNet()
    gen = torch.Generator().manual_seed(3)
    images = (torch.randint(0, 256, (4, 1, 4, 4), generator=gen).float() / 127.5) - 1
    # The exact sum over t of E[L_t], from the full loop over many noise draws.
    repeated = images.repeat(200, 1, 1, 1)
    full = diffusion.calc_bpd_loop(net, repeated, clip_denoised=False, generator=gen)
    per_example = full["vb"].sum(dim=1)
    exact = float(per_example.mean())
    exact_se = float(per_example.std()) / math.sqrt(per_example.numel())
    if kind == "uniform":
        sampler = UniformSampler(T)
    else:
        sampler = warmed_resampler(full["vb"].mean(dim=0).double(), uniform_prob=0.01)
    stats = analysis.vlb_gradient_stats(diffusion, net, images, sampler, 300, 8, seed=5)
    se = math.sqrt(stats.loss_variance / stats.num_draws + exact_se**2)
    assert abs(stats.loss_mean - exact) < 4 * se
    assert stats.grad_trace_covariance > 0


def test_vlb_gradient_importance_beats_uniform():
    T = 20
    diffusion = create_diffusion("cosine", T, variance_type="learned_range", loss_type="vlb")
    net = TinyNet()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 4, 4, generator=gen) * 2 - 1
    terms = diffusion.calc_bpd_loop(net, images, clip_denoised=False, generator=gen)["vb"]
    rms = terms.pow(2).mean(dim=0).sqrt().double()
    uniform = analysis.vlb_gradient_stats(diffusion, net, images, UniformSampler(T), 60, 4)
    importance = analysis.vlb_gradient_stats(diffusion, net, images, warmed_resampler(rms), 60, 4)
    assert importance.loss_variance < uniform.loss_variance


def test_trace_goes_from_uniform_to_learned():
    T = 8
    diffusion = create_diffusion("cosine", T, variance_type="learned_range", loss_type="vlb")
    images = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sampler = LossSecondMomentResampler(T)
    snaps = analysis.trace_importance_sampler(
        diffusion, TinyNet(), images, sampler, num_batches=30, batch_size=16, snapshot_every=10
    )
    assert [s.batches for s in snaps] == [0, 10, 20, 30]
    torch.testing.assert_close(snaps[0].weights, torch.full((T,), 1 / T, dtype=torch.float64))
    assert snaps[0].warmup_fraction == 0.0
    assert snaps[-1].warmup_fraction == 1.0
    assert snaps[-1].weights.sum().item() == pytest.approx(1.0)
    assert snaps[-1].weights.std() > 0


# ---------------------------------------------------------------------- schedules and images


def test_schedule_curves_linear():
    curves = analysis.schedule_curves("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    np.testing.assert_allclose(curves["alphas_cumprod"].numpy(), alpha_bar, rtol=1e-5)
    ratio = (1 - np.concatenate([[1.0], alpha_bar[:-1]])) / (1 - alpha_bar)
    np.testing.assert_allclose(curves["variance_ratio"].numpy(), ratio, rtol=1e-4, atol=1e-7)
    assert curves["tau"][0].item() == pytest.approx(1e-3)
    assert curves["tau"][-1].item() == 1.0


def test_schedule_curves_cosine_midpoint():
    curves = analysis.schedule_curves("cosine", 4000)
    s = 0.008
    f = lambda tau: math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2
    assert curves["alphas_cumprod"][1999].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-5)
    assert curves["variance_ratio"][0].item() == 0.0


def test_first_index_at_least():
    values = torch.tensor([0.0, 0.5, 0.99, 0.995, 1.0])
    assert analysis.first_index_at_least(values, 0.99) == 2
    assert analysis.first_index_at_least(values, 0.0) == 0
    assert analysis.first_index_at_least(values, 2.0) == -1


def test_noise_fractions_share_noise():
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    linear = GaussianDiffusion(get_named_beta_schedule("linear", 100))
    cosine = GaussianDiffusion(get_named_beta_schedule("cosine", 100))
    a = analysis.noise_at_fractions(linear, x, [0.0, 1.0], seed=4)
    b = analysis.noise_at_fractions(cosine, x, [0.0, 1.0], seed=4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 2, 3, 4, 4)
    ab = linear.alphas_cumprod[99]
    torch.testing.assert_close(a[1], ab.sqrt() * x + (1 - ab).sqrt() * noise)
    ab0 = cosine.alphas_cumprod[0]
    torch.testing.assert_close(b[0], ab0.sqrt() * x + (1 - ab0).sqrt() * noise)


def test_noise_fraction_out_of_range():
    diffusion = create_diffusion("cosine", 10)
    with pytest.raises(ValueError, match="lie in"):
        analysis.noise_at_fractions(diffusion, torch.zeros(1, 1, 2, 2), [1.5])


def test_sample_photo_shape():
    photo = analysis.sample_photo(32)
    assert photo.shape == (1, 3, 32, 32)
    assert photo.dtype == torch.uint8
    assert photo.float().std() > 10  # a real picture, not a flat fill


def test_cumulative_share():
    shares = analysis.cumulative_share(torch.tensor([6.0, 2.0, 1.0, 1.0]))
    torch.testing.assert_close(shares, torch.tensor([0.6, 0.8, 0.9, 1.0], dtype=torch.float64))


def test_leading_share():
    terms = torch.tensor([6.0, 2.0, 1.0, 1.0])
    assert analysis.leading_share(terms, 1) == pytest.approx(0.6)
    assert analysis.leading_share(terms, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_steps"):
        analysis.leading_share(terms, 5)


# ---------------------------------------------------------------------- fixed variance, sampling


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_fixed_variance_keeps_mean(variance):
    learned = create_diffusion("cosine", 30, variance_type="learned_range").respace("6")
    fixed, model = analysis.fixed_variance_model(learned, TinyNet(), variance, image_channels=1)
    assert fixed.variance_type.value == variance
    torch.testing.assert_close(fixed.timestep_map, learned.timestep_map)
    torch.testing.assert_close(fixed.betas, learned.betas)
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.arange(6)
    ours = fixed.p_mean_variance(model, x, t)
    theirs = learned.p_mean_variance(TinyNet(), x, t)
    torch.testing.assert_close(ours.mean, theirs.mean)
    betas = learned.betas64
    alpha_bar = torch.cumprod(1 - betas, 0)
    beta_tilde = betas[1:] * (1 - alpha_bar[:-1]) / (1 - alpha_bar[1:])
    if variance == "fixed_small":
        expected = torch.cat([beta_tilde[:1], beta_tilde])
    else:
        expected = torch.cat([beta_tilde[:1], betas[1:]])
    torch.testing.assert_close(ours.variance[:, 0, 0, 0], expected.float(), rtol=1e-5, atol=0)


def test_fixed_variance_refuses_learned():
    diffusion = create_diffusion("cosine", 10)
    with pytest.raises(ValueError, match="fixed_small or fixed_large"):
        analysis.fixed_variance_model(diffusion, TinyNet(), "learned", image_channels=1)


def test_mean_channels_slice():
    net = TinyNet(out_channels=2)
    x, t = torch.randn(2, 1, 3, 3), torch.tensor([1.0, 2.0])
    torch.testing.assert_close(analysis.MeanChannels(net, 1)(x, t), net(x, t)[:, :1])


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
def test_draw_samples_steps_and_seed(method):
    diffusion = create_diffusion("cosine", 40, variance_type="learned_range")
    model = CallCounter(TinyNet())
    a = analysis.draw_samples(diffusion, model, (3, 1, 4, 4), steps=5, method=method, seed=2)
    assert model.calls == 5
    b = analysis.draw_samples(diffusion, model, (3, 1, 4, 4), steps="5", method=method, seed=2)
    torch.testing.assert_close(a, b)
    analysis.draw_samples(diffusion, model, (3, 1, 4, 4), steps=None, method=method, seed=2)
    assert model.calls == 5 + 5 + 40


def test_draw_samples_unknown_method():
    with pytest.raises(ValueError, match="ancestral, ddim"):
        analysis.draw_samples(create_diffusion("cosine", 10), TinyNet(), (1, 1, 2, 2), method="x")


# ---------------------------------------------------------------------- Frechet distance


class Flatten(nn.Module):
    """Features = the pixel values themselves."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).double()


def test_frechet_shift_is_squared_distance():
    # Same covariance, means apart by d: the distance is ||d||^2 exactly.
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(50, 150, (64, 1, 1, 3), generator=gen, dtype=torch.uint8)
    fake = real + torch.tensor([3, 0, 4], dtype=torch.uint8).reshape(1, 1, 1, 3)
    assert analysis.frechet_distance(real, fake, Flatten(3)) == pytest.approx(25.0, abs=1e-6)


def test_frechet_of_identical_sets_is_zero():
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    distance = analysis.frechet_distance(images, images.clone(), analysis.RandomConvFeatures(1))
    assert distance == pytest.approx(0.0, abs=1e-6)


def test_frechet_refuses_float_images():
    with pytest.raises(ValueError, match="uint8"):
        analysis.frechet_distance(torch.zeros(4, 1, 2, 2), torch.zeros(4, 1, 2, 2), Flatten(4))


def test_random_features_are_fixed_by_seed():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    a = analysis.RandomConvFeatures(3, width=4, seed=1)(images)
    b = analysis.RandomConvFeatures(3, width=4, seed=1)(images)
    assert a.shape == (5, 8)
    assert analysis.RandomConvFeatures(3, width=4).num_features == 8
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------- runs and checkpoints


def test_reuse_existing_checkpoint(tmp_path):
    checkpoint = tmp_path / "given.ckpt"
    checkpoint.write_bytes(b"")
    assert analysis.train_or_reuse(str(checkpoint), ["no.such=1"], tmp_path / "runs") == checkpoint
    assert not (tmp_path / "runs").exists()


def test_run_config_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config_tree.yaml"):
        analysis.run_config(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_run_config_prefers_hydra_copy(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("source: hydra\n")
    (tmp_path / "config_tree.yaml").write_text("source: tree\n")
    assert analysis.run_config(tmp_path / "checkpoints" / "last.ckpt").source == "hydra"


@pytest.mark.slow
def test_train_then_load(tmp_path):
    overrides = [
        *analysis.TINY_OVERRIDES,
        "diffusion.num_timesteps=20",
        "sampler=importance",
        "loss=vlb",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "data.batch_size=8",
    ]
    checkpoint = analysis.train_or_reuse("", overrides, tmp_path / "runs")
    assert checkpoint.is_relative_to(tmp_path / "runs")
    module = analysis.load_module(checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, state["state_dict"][name], msg=name)
    assert module.diffusion.num_timesteps == 20
    assert not module.training
    # 3 steps of 8 examples went into the importance sampler's history.
    assert int(module.timestep_sampler.counts.sum()) == 24
