"""The digits classifier and FID/KID: accuracy, caching, determinism and closed-form checks."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from iddpm_pl.data import DigitsDataModule
from iddpm_pl.metrics import (
    ClassifierFeatures,
    ClassifierSettings,
    DigitsClassifier,
    accuracy,
    compute_fid_kid,
    find_inception_weights,
    load_digits_classifier,
    train_digits_classifier,
)
from iddpm_pl.metrics import digits_classifier as classifier_module

# A short training run for the tests that train from scratch (determinism, cache keys).
QUICK = ClassifierSettings(steps=20)


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[DigitsClassifier, dict]:
    """The default classifier, cached where the evaluation tests look for it too."""
    return load_digits_classifier(directory=tmp_path_factory.getbasetemp() / "env" / "cache")


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    datamodule = DigitsDataModule()
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="session")
def features(classifier) -> ClassifierFeatures:
    return ClassifierFeatures(classifier[0])


def uniform_noise(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, like.shape, dtype=torch.uint8, generator=generator)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID from its definition in float64 with SciPy's matrix square root."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


# ---------------------------------------------------------------- classifier


def test_classifier_test_accuracy(classifier, digits):
    model, info = classifier
    measured = accuracy(model, digits.uint8_images("test"), digits.labels("test"))
    assert measured > 0.95
    assert info["test_accuracy"] == pytest.approx(measured)
    assert info["train_accuracy"] >= measured


def test_classifier_cache_reused(classifier, tmp_path_factory, monkeypatch):
    model, info = classifier

    def fail(settings):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(classifier_module, "train_digits_classifier", fail)
    again, info_again = load_digits_classifier(
        directory=tmp_path_factory.getbasetemp() / "env" / "cache"
    )
    assert info_again["path"] == info["path"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IDDPM_CACHE_DIR", str(tmp_path / "here"))
    _, info = load_digits_classifier(QUICK)
    assert Path(info["path"]).parent == tmp_path / "here" / "digits_classifier"
    assert Path(info["path"]).name == f"{QUICK.key()}.pt"


def test_training_deterministic():
    first, scores = train_digits_classifier(QUICK)
    again, scores_again = train_digits_classifier(QUICK)
    for name, tensor in first.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    assert scores == scores_again


def test_training_leaves_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_digits_classifier(QUICK)
    assert torch.equal(torch.rand(3), expected)


def test_cache_key_tracks_settings():
    keys = {
        QUICK.key(),
        replace(QUICK, seed=1).key(),
        replace(QUICK, split_seed=1).key(),
        replace(QUICK, num_features=32).key(),
    }
    assert len(keys) == 4
    assert replace(QUICK).key() == QUICK.key()


def test_corrupt_cache_retrained(tmp_path):
    path = tmp_path / "digits_classifier" / f"{QUICK.key()}.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    model, info = load_digits_classifier(QUICK, directory=tmp_path)
    assert info["test_accuracy"] > 0.5
    reloaded = torch.load(path, weights_only=True)
    assert torch.equal(reloaded["state_dict"]["head.weight"], model.head.weight)


def test_feature_module_frozen(features):
    features.train()
    assert not features.training
    assert not features.classifier.training
    assert all(not p.requires_grad for p in features.parameters())
    assert features.num_features == 64


def test_features_centred_on_train_split(features, digits):
    train = features(digits.uint8_images("train")).double()
    assert train.mean(dim=0).abs().max() < 1e-4
    assert train.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)


def test_upscaled_digits_same_features(features, digits):
    small = digits.uint8_images("test")[:16]
    large = small.repeat_interleave(3, dim=-2).repeat_interleave(3, dim=-1)
    assert torch.allclose(features(large), features(small), atol=1e-5)


def test_classifier_rejects_rgb(features):
    with pytest.raises(ValueError, match="one-channel"):
        features(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_accuracy_counts_matches():
    class Fixed(torch.nn.Module):
        def forward(self, images):
            return torch.eye(10)[images.flatten(1)[:, 0].long()]

    images = torch.tensor([0, 1, 2, 3]).reshape(4, 1, 1, 1)
    assert accuracy(Fixed(), images, torch.tensor([0, 1, 9, 9])) == pytest.approx(0.5)


# ---------------------------------------------------------------- FID and KID


def test_fid_split_against_itself(features, digits):
    test = digits.uint8_images("test")
    result = compute_fid_kid(test, test.clone(), features, ["fid"])
    assert abs(result["fid"]["value"]) < 1e-3
    assert result["fid"]["num_reference"] == 180
    assert result["fid"]["num_samples"] == 180


def test_fid_noise_large(features, digits):
    test = digits.uint8_images("test")
    same_data = compute_fid_kid(test, digits.uint8_images("val"), features, ["fid"])
    noise = compute_fid_kid(test, uniform_noise(test), features, ["fid"])
    assert noise["fid"]["value"] > 20 * same_data["fid"]["value"]
    assert noise["fid"]["value"] > 50


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # units that never fire
def test_fid_matches_definition(features, digits):
    test, val = digits.uint8_images("test"), digits.uint8_images("val")
    result = compute_fid_kid(test, val, features, ["fid"], batch_size=64)
    expected = frechet_distance(features(test).double().numpy(), features(val).double().numpy())
    assert result["fid"]["value"] == pytest.approx(expected, rel=1e-3)
    assert result["fid"]["batch_size"] == 64


def test_kid_split_against_itself(features, digits):
    test = digits.uint8_images("test")
    result = compute_fid_kid(test, test.clone(), features, ["kid"], kid_subsets=5)
    noise = compute_fid_kid(test, uniform_noise(test), features, ["kid"], kid_subsets=5)
    # With one subset covering both identical sets, the unbiased MMD^2 estimate is
    # 2 (mean of k over pairs i != j) - 2 (mean of k over all pairs): slightly negative.
    f = features(test).double().numpy()
    k = cubic_kernel(f, f)
    m = len(f)
    off_diagonal = (k.sum() - np.trace(k)) / (m * (m - 1))
    expected = 2 * off_diagonal - 2 * k.mean()
    assert result["kid"]["mean"] == pytest.approx(expected, rel=1e-3)
    assert abs(result["kid"]["mean"]) < 0.01 * noise["kid"]["mean"]
    assert result["kid"]["subset_size"] == 180


def test_kid_noise_large(features, digits):
    test = digits.uint8_images("test")
    same_data = compute_fid_kid(test, digits.uint8_images("val"), features, ["kid"])
    noise = compute_fid_kid(test, uniform_noise(test), features, ["kid"])
    assert noise["kid"]["mean"] > 100 * abs(same_data["kid"]["mean"])
    assert noise["kid"]["mean"] > 1


def test_kid_seeded_subsets(features, digits):
    test, train = digits.uint8_images("test"), digits.uint8_images("train")[:400]
    first = compute_fid_kid(test, train, features, ["kid"], kid_subset_size=50, seed=3)
    again = compute_fid_kid(test, train, features, ["kid"], kid_subset_size=50, seed=3)
    other = compute_fid_kid(test, train, features, ["kid"], kid_subset_size=50, seed=4)
    assert first["kid"]["mean"] == again["kid"]["mean"]
    assert first["kid"]["mean"] != other["kid"]["mean"]
    assert first["kid"]["subset_size"] == 50


@pytest.mark.parametrize(
    ("real", "fake", "message"),
    [
        (torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "must be uint8"),
        (
            torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
            torch.zeros(4, 1, 16, 16, dtype=torch.uint8),
            "compare images of one size",
        ),
        (
            torch.zeros(1, 1, 8, 8, dtype=torch.uint8),
            torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
            "at least 2 reference images",
        ),
    ],
)
def test_fid_input_checks(features, real, fake, message):
    with pytest.raises(ValueError, match=message):
        compute_fid_kid(real, fake, features)


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity installed"
)
def test_inception_without_torch_fidelity():
    with pytest.raises(ValueError, match="pip install torch-fidelity") as error:
        find_inception_weights("/some/weights.pth")
    assert "features.inception_weights_path" in str(error.value)


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is None, reason="torch-fidelity not installed"
)
def test_inception_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inception_weights(tmp_path / "missing.pth")
