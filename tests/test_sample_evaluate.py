"""Sampling and evaluation from checkpoints: outputs, NLL bounds, safe loading and errors.

A tiny class-conditional model is trained once per session through the training CLI, so the
run folder (``.hydra/config.yaml``, ``checkpoints/last.ckpt``) is exactly what a user has.
Runs with random weights, written beside it, cover the unconditional and mismatched cases.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from iddpm_pl.builders import build_module
from iddpm_pl.checkpoint import load_checkpoint_file, load_run
from iddpm_pl.evaluate import evaluate
from iddpm_pl.sample import sample

T = 50
MODEL_OVERRIDES = [
    "model.model_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[4]",
    "model.num_groups=4",
    "model.num_heads=2",
    f"diffusion.num_timesteps={T}",
]
TRAIN_OVERRIDES = [
    *MODEL_OVERRIDES,
    "model.num_classes=${image.num_classes}",
    "logger=none",
    # 100 steps take a few seconds and lower the NLL clearly below that of random weights.
    "trainer.max_steps=100",
    "trainer.val_check_interval=100",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.sample_grid.every_n_steps=0",
    "callbacks.sample_grid.steps=5",
    "callbacks.sample_grid.num_samples=4",
]
TEST_SPLIT_SIZE = 180


def run_cli(module: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of the tiny class-conditional model after 100 training steps."""
    root = tmp_path_factory.mktemp("trained")
    run_dir = root / "run"
    result = run_cli(
        "iddpm_pl.train",
        *TRAIN_OVERRIDES,
        f"hydra.run.dir={run_dir}",
        env={"IDDPM_LOG_DIR": str(root / "logs"), "WANDB_MODE": "disabled"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.fixture
def compose_cfg() -> Iterator[Callable[..., DictConfig]]:
    """Return ``compose(config_name, *overrides)`` over the package's real configs."""
    GlobalHydra.instance().clear()
    with initialize_config_module("iddpm_pl.conf", version_base="1.3"):

        def _compose(name: str, *overrides: str) -> DictConfig:
            return compose(name, overrides=list(overrides))

        yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def sample_cfg(compose_cfg, request, tmp_path) -> Callable[..., DictConfig]:
    """``sample.yaml`` for ``ckpt`` (default: the trained run): 6 images, 5 steps, output in tmp."""

    def _compose(*overrides: str, ckpt: Path | None = None) -> DictConfig:
        ckpt = ckpt or request.getfixturevalue("trained_run") / "checkpoints" / "last.ckpt"
        return compose_cfg(
            "sample",
            f"ckpt_path={ckpt}",
            "num_samples=6",
            "batch_size=4",
            "sampling.steps=5",
            "device=cpu",
            "progress=false",
            f"output_dir={tmp_path / 'samples'}",
            *overrides,
        )

    return _compose


@pytest.fixture
def evaluate_cfg(compose_cfg, request, tmp_path) -> Callable[..., DictConfig]:
    """``evaluate.yaml`` for ``ckpt`` (default: the trained run), output in tmp."""

    def _compose(*overrides: str, ckpt: Path | None = None) -> DictConfig:
        ckpt = ckpt or request.getfixturevalue("trained_run") / "checkpoints" / "last.ckpt"
        return compose_cfg(
            "evaluate",
            f"ckpt_path={ckpt}",
            "device=cpu",
            "progress=false",
            "sampling.steps=5",
            f"output_dir={tmp_path / 'eval'}",
            *overrides,
        )

    return _compose


def compose_once(name: str, *overrides: str) -> DictConfig:
    """Compose one config, in the test's Hydra context if there is one (session fixtures
    have none)."""
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=list(overrides))
    with initialize_config_module("iddpm_pl.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def write_random_run(run_dir: Path, *overrides: str) -> Path:
    """Write a run folder whose checkpoint contains the random initial weights; return it."""
    cfg = compose_once(
        "train", *MODEL_OVERRIDES, "logger=none", "callbacks.sample_grid.steps=5", *overrides
    )
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir))
    torch.manual_seed(0)
    module = build_module(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, ckpt)
    return ckpt


@pytest.fixture(scope="session")
def random_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of the tiny class-conditional model with random weights (for error cases)."""
    ckpt = write_random_run(
        tmp_path_factory.mktemp("random") / "run", "model.num_classes=${image.num_classes}"
    )
    return ckpt.parents[1]


def read_terms(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- sampling


@pytest.mark.slow
def test_sample_cli_default_folder(trained_run):
    result = run_cli(
        "iddpm_pl.sample",
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        "num_samples=12",
        "batch_size=8",
        "sampling.steps=5",
        "sampling.method=ddim",
        "seed=3",
        "device=cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = trained_run / "samples_cli" / "ddim_5_seed3"
    assert (folder / "grid.png").is_file()
    with np.load(folder / "samples_12x8x8x1.npz") as data:
        assert data["arr_0"].shape == (12, 8, 8, 1)
        assert data["arr_0"].dtype == np.uint8
        assert data["arr_1"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    info = json.loads((folder / "sample_info.json").read_text())
    assert info["num_steps"] == 5
    assert info["batch_size"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ancestral", "ddim"])
def test_sample_seed_reproducible(sample_cfg, tmp_path, method):
    first = sample(sample_cfg(f"sampling.method={method}", "seed=1"))
    again = sample(sample_cfg(f"sampling.method={method}", "seed=1"))
    other = sample(sample_cfg(f"sampling.method={method}", "seed=2"))
    assert np.array_equal(first["images"], again["images"])
    assert not np.array_equal(first["images"], other["images"])


@pytest.mark.slow
def test_sample_bf16_close_to_fp32(sample_cfg, tmp_path):
    fp32 = sample(sample_cfg("seed=3", f"output_dir={tmp_path / 'fp32'}"))
    bf16 = sample(sample_cfg("seed=3", "precision=bf16", f"output_dir={tmp_path / 'bf16'}"))
    info = json.loads(bf16["info_path"].read_text())
    assert info["precision"] == "bf16"
    # Another arithmetic path, so not identical, but the same images to within a few levels.
    difference = np.abs(fp32["images"].astype(int) - bf16["images"].astype(int))
    assert difference.max() > 0
    assert difference.mean() < 3.0


@pytest.mark.slow
def test_sample_compiled_matches_eager(sample_cfg, tmp_path):
    eager = sample(sample_cfg("seed=5", f"output_dir={tmp_path / 'eager'}"))
    compiled = sample(sample_cfg("seed=5", "compile=true", f"output_dir={tmp_path / 'compiled'}"))
    assert json.loads(compiled["info_path"].read_text())["compile"] is True
    difference = np.abs(eager["images"].astype(int) - compiled["images"].astype(int))
    assert difference.max() <= 1  # float32 either way: at most a rounding step apart


@pytest.mark.parametrize("entry", ["sample", "evaluate"])
def test_invalid_precision_rejected_before_loading(compose_cfg, tmp_path, entry):
    cfg = compose_cfg(entry, f"ckpt_path={tmp_path / 'missing.ckpt'}", "precision=fp16")
    run = sample if entry == "sample" else evaluate
    with pytest.raises(ValueError, match="precision='fp16' is invalid; use 32"):
        run(cfg)


@pytest.mark.slow
def test_sample_npz_layout(sample_cfg):
    result = sample(sample_cfg("labels=random", "seed=4"))
    with np.load(result["npz_path"]) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (6, 8, 8, 1)
    assert images.dtype == np.uint8
    assert labels.dtype == np.int64
    expected = torch.randint(10, (6,), generator=torch.Generator().manual_seed(4))
    assert labels.tolist() == expected.tolist()
    assert result["npz_path"].name == "samples_6x8x8x1.npz"
    assert result["grid_path"].is_file()


@pytest.mark.slow
def test_sample_null_steps_full_chain(sample_cfg):
    result = sample(sample_cfg("sampling.steps=null", "num_samples=2"))
    info = json.loads(result["info_path"].read_text())
    assert info["num_steps"] == T
    assert info["steps"] is None


def test_sample_unconditional_no_labels(compose_cfg, tmp_path):
    ckpt = write_random_run(tmp_path / "run")
    cfg = compose_cfg(
        "sample",
        f"ckpt_path={ckpt}",
        "num_samples=3",
        "sampling.steps=2",
        "device=cpu",
        "progress=false",
    )
    result = sample(cfg)
    assert result["output_dir"] == tmp_path / "run" / "samples_cli" / "ancestral_2_seed0"
    with np.load(result["npz_path"]) as data:
        assert data.files == ["arr_0"]
    assert result["labels"] is None


# ---------------------------------------------------------------- NLL


@pytest.mark.slow
def test_nll_full_chain(evaluate_cfg):
    result = evaluate(evaluate_cfg("metrics=[nll]"))
    nll = result["metrics"]["nll"]
    assert math.isfinite(nll["bpd"])
    assert nll["bpd"] < 8.0
    assert nll["num_images"] == TEST_SPLIT_SIZE
    assert nll["num_steps"] == T
    assert nll["full_chain"] is True
    assert 0 < nll["bpd_stderr"] < 0.5
    assert nll["prior_bpd"] >= 0
    saved = json.loads(result["metrics_path"].read_text())
    assert saved["nll"]["bpd"] == nll["bpd"]


@pytest.mark.slow
def test_nll_terms_sum_to_total(evaluate_cfg):
    result = evaluate(evaluate_cfg("metrics=[nll]", "nll.max_images=40"))
    nll = result["metrics"]["nll"]
    rows = read_terms(result["output_dir"] / nll["terms_file"])
    assert [int(r["t"]) for r in rows] == list(range(T))
    assert [int(r["original_step"]) for r in rows] == list(range(T))
    total = sum(float(r["vb_bpd"]) for r in rows) + nll["prior_bpd"]
    assert total == pytest.approx(nll["bpd"], rel=1e-5)
    assert float(rows[0]["vb_bpd"]) == pytest.approx(nll["decoder_bpd"], rel=1e-6)


@pytest.mark.slow
def test_nll_steps_per_call_same_bound(evaluate_cfg):
    common = ("metrics=[nll]", "nll.max_images=12", "nll.batch_size=8")
    single = evaluate(evaluate_cfg(*common, "nll.steps_per_call=1"))["metrics"]["nll"]
    auto = evaluate(evaluate_cfg(*common))["metrics"]["nll"]
    assert single["steps_per_call"] == 1
    assert auto["steps_per_call"] is None
    assert auto["bpd"] == pytest.approx(single["bpd"], rel=1e-5)
    assert auto["decoder_bpd"] == pytest.approx(single["decoder_bpd"], rel=1e-5)


@pytest.mark.slow
def test_nll_bf16_close_to_fp32(evaluate_cfg):
    common = ("metrics=[nll]", "nll.max_images=12")
    fp32 = evaluate(evaluate_cfg(*common))["metrics"]["nll"]
    bf16 = evaluate(evaluate_cfg(*common, "precision=bf16"))["metrics"]["nll"]
    assert bf16["precision"] == "bf16"
    assert bf16["bpd"] != fp32["bpd"]
    assert bf16["bpd"] == pytest.approx(fp32["bpd"], rel=0.02)


def test_nll_steps_per_call_zero_rejected(evaluate_cfg, tmp_path):
    # A missing checkpoint: the option is checked before anything is loaded.
    cfg = evaluate_cfg("metrics=[nll]", "nll.steps_per_call=0", ckpt=tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="nll.steps_per_call=0 is invalid"):
        evaluate(cfg)


@pytest.mark.slow
def test_nll_trained_beats_random_weights(evaluate_cfg, trained_run, tmp_path):
    random_run = tmp_path / "random"
    shutil.copytree(trained_run / ".hydra", random_run / ".hydra")
    cfg = OmegaConf.load(random_run / ".hydra" / "config.yaml")
    OmegaConf.update(cfg, "paths.output_dir", str(random_run))
    torch.manual_seed(0)
    state = build_module(cfg).state_dict()
    (random_run / "checkpoints").mkdir()
    torch.save({"state_dict": state}, random_run / "checkpoints" / "init.ckpt")
    trained = evaluate(evaluate_cfg("metrics=[nll]"))["metrics"]["nll"]
    untrained = evaluate(
        evaluate_cfg("metrics=[nll]", ckpt=random_run / "checkpoints" / "init.ckpt")
    )["metrics"]["nll"]
    margin = 3 * (trained["bpd_stderr"] + untrained["bpd_stderr"])
    assert trained["bpd"] + margin < untrained["bpd"]


@pytest.mark.slow
def test_respaced_nll_upper_bound(evaluate_cfg):
    full = evaluate(evaluate_cfg("metrics=[nll]"))["metrics"]["nll"]
    respaced = evaluate(evaluate_cfg("metrics=[nll]", "nll.steps=10"))["metrics"]["nll"]
    assert respaced["num_steps"] == 10
    assert respaced["full_chain"] is False
    assert respaced["steps"] == "10"
    assert respaced["bpd"] >= full["bpd"]


@pytest.mark.slow
def test_respaced_terms_original_steps(evaluate_cfg):
    result = evaluate(evaluate_cfg("metrics=[nll]", "nll.steps=10", "nll.max_images=5"))
    rows = read_terms(result["output_dir"] / "vb_terms.csv")
    steps = [int(r["original_step"]) for r in rows]
    assert len(steps) == 10
    assert steps[0] == 0
    assert steps[-1] == T - 1


@pytest.mark.slow
def test_nll_max_images_recorded(evaluate_cfg):
    nll = evaluate(evaluate_cfg("metrics=[nll]", "nll.max_images=7", "nll.steps=5"))["metrics"][
        "nll"
    ]
    assert nll["num_images"] == 7
    assert nll["max_images"] == 7


# ---------------------------------------------------------------- sample quality


@pytest.mark.slow
def test_evaluate_fid_kid_accuracy(evaluate_cfg):
    metrics = evaluate(
        evaluate_cfg("metrics=[fid,kid,accuracy]", "sampling.num_samples=40", "kid.subsets=10")
    )["metrics"]
    assert metrics["fid"]["value"] > 0
    assert metrics["fid"]["num_samples"] == 40
    assert metrics["fid"]["num_reference"] == TEST_SPLIT_SIZE
    assert metrics["fid"]["batch_size"] == 256
    assert metrics["kid"]["subset_size"] == 40
    assert 0.0 <= metrics["accuracy"]["value"] <= 1.0
    assert metrics["features"]["test_accuracy"] > 0.95
    assert metrics["samples"]["num_steps"] == 5
    assert "nll" not in metrics


@pytest.mark.slow
def test_evaluate_saved_samples(sample_cfg, evaluate_cfg):
    drawn = sample(sample_cfg("num_samples=20", "batch_size=20"))
    metrics = evaluate(
        evaluate_cfg("metrics=[accuracy]", f"sampling.samples_path={drawn['npz_path']}")
    )["metrics"]
    assert metrics["samples"]["num_samples"] == 20
    assert metrics["samples"]["source"] == str(drawn["npz_path"])
    assert 0.0 <= metrics["accuracy"]["value"] <= 1.0


@pytest.mark.slow
def test_evaluate_csv_logger(evaluate_cfg):
    result = evaluate(
        evaluate_cfg("metrics=[nll]", "nll.steps=5", "nll.max_images=4", "logger=csv")
    )
    files = list(result["output_dir"].glob("csv/**/metrics.csv"))
    assert len(files) == 1
    with files[0].open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["eval/test/bpd"]) == pytest.approx(result["metrics"]["nll"]["bpd"])


# ---------------------------------------------------------------- safe loading


class WritesMarker:
    """Unpickling this object opens (creates) ``marker``: code run by a full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        ("torch.save", "rejected the checkpoint .* it contains io.open"),
        (2, "rejected the checkpoint .* it contains io.open"),
        # Protocol 4 framing is outside what the weights-only unpickler parses at all.
        (4, "not a PyTorch checkpoint"),
    ],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_checkpoint_rejected(random_run, tmp_path, protocol, message):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    shutil.copytree(random_run / ".hydra", run / ".hydra")
    ckpt = run / "checkpoints" / "evil.ckpt"
    ckpt.parent.mkdir()
    payload = {"state_dict": WritesMarker(marker), "global_step": 1}
    if protocol == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(ValueError, match=message):
        load_checkpoint_file(ckpt)
    with pytest.raises(ValueError, match=message):
        load_run(ckpt)
    assert not marker.exists()
    # The payload is live: the full unpickler creates the marker.
    if protocol == "torch.save":
        unsafe = torch.load(ckpt, weights_only=False)
    else:
        unsafe = pickle.loads(ckpt.read_bytes())
    unsafe["state_dict"].close()
    assert marker.exists()


# ---------------------------------------------------------------- errors


def test_missing_checkpoint(sample_cfg, tmp_path):
    missing = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sample(sample_cfg(ckpt=missing))


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_checkpoint(random_run, tmp_path, keep):
    run = tmp_path / "run"
    shutil.copytree(random_run / ".hydra", run / ".hydra")
    data = (random_run / "checkpoints" / "last.ckpt").read_bytes()
    ckpt = run / "checkpoints" / "cut.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated, corrupt") as error:
        load_run(ckpt)
    assert str(ckpt) in str(error.value)


def test_garbage_checkpoint(tmp_path):
    ckpt = tmp_path / "noise.ckpt"
    ckpt.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="truncated, corrupt or not a PyTorch checkpoint"):
        load_checkpoint_file(ckpt)


def test_incompatible_checkpoint(random_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(random_run / ".hydra", run / ".hydra")
    config = run / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.model.model_channels = 16
    OmegaConf.save(cfg, config)
    (run / "checkpoints").mkdir()
    shutil.copy(random_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="does not match the module built from") as error:
        load_run(run / "checkpoints" / "last.ckpt")
    assert "shapes differ" in str(error.value)
    assert "net.input_blocks" in str(error.value) or "net." in str(error.value)


def test_unconditional_config_conditional_ckpt(random_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(random_run / ".hydra", run / ".hydra")
    config = run / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.model.num_classes = None
    OmegaConf.save(cfg, config)
    (run / "checkpoints").mkdir()
    shutil.copy(random_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="not in the rebuilt module"):
        load_run(run / "checkpoints" / "last.ckpt")


def test_missing_run_config(random_run, tmp_path):
    ckpt = tmp_path / "moved" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(random_run / "checkpoints" / "last.ckpt", ckpt)
    with pytest.raises(FileNotFoundError, match=r"\.hydra/config\.yaml"):
        load_run(ckpt)


def test_run_dir_override_finds_moved_checkpoint(random_run, tmp_path):
    ckpt = tmp_path / "moved.ckpt"
    shutil.copy(random_run / "checkpoints" / "last.ckpt", ckpt)
    run = load_run(ckpt, run_dir=random_run)
    assert run.run_dir == random_run
    assert run.global_step == 0


@pytest.mark.parametrize(
    ("steps", "message"), [(T + 1, f"above T={T}"), (0, "below 1"), ("abc", "invalid respacing")]
)
def test_sample_steps_out_of_range(sample_cfg, random_run, steps, message):
    with pytest.raises(ValueError, match=message):
        sample(sample_cfg(f"sampling.steps={steps}", ckpt=random_run / "checkpoints" / "last.ckpt"))


@pytest.mark.parametrize(("steps", "message"), [(T + 1, f"above T={T}"), (-3, "below 1")])
def test_nll_steps_out_of_range(evaluate_cfg, random_run, steps, message):
    with pytest.raises(ValueError, match=f"nll.steps={steps}.*{message}"):
        evaluate(evaluate_cfg(f"nll.steps={steps}", ckpt=random_run / "checkpoints" / "last.ckpt"))


def test_ckpt_path_required(compose_cfg):
    with pytest.raises(ValueError, match="ckpt_path is required"):
        sample(compose_cfg("sample"))
    with pytest.raises(ValueError, match="ckpt_path is required"):
        evaluate(compose_cfg("evaluate"))


def test_unknown_method(sample_cfg, random_run):
    cfg = sample_cfg("sampling.method=langevin", ckpt=random_run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="unknown sampling.method='langevin'"):
        sample(cfg)


def test_unknown_metric(evaluate_cfg, random_run):
    cfg = evaluate_cfg("metrics=[nll,bleu]", ckpt=random_run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="unknown metric.*'bleu'"):
        evaluate(cfg)


def test_unknown_split(evaluate_cfg, random_run):
    cfg = evaluate_cfg("split=holdout", ckpt=random_run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="unknown split='holdout'"):
        evaluate(cfg)


def test_unknown_label_mode(sample_cfg, random_run):
    cfg = sample_cfg("labels=balanced", ckpt=random_run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="unknown labels='balanced'"):
        sample(cfg)


def test_accuracy_needs_conditional(compose_cfg, tmp_path):
    ckpt = write_random_run(tmp_path / "run")
    cfg = compose_cfg(
        "evaluate",
        f"ckpt_path={ckpt}",
        "metrics=[accuracy]",
        "sampling.steps=5",
        "device=cpu",
        "progress=false",
    )
    with pytest.raises(ValueError, match="class-conditional"):
        evaluate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "args", "message"),
    [
        ("iddpm_pl.sample", ["ckpt_path=/nonexistent/checkpoints/last.ckpt"], "does not exist"),
        ("iddpm_pl.evaluate", ["ckpt_path=X", "metrics=[nll,bleu]"], "unknown metric"),
    ],
)
def test_cli_error_exit(entry, args, message):
    result = run_cli(entry, *args, "device=cpu")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert message in output
    assert "Traceback" not in output


def test_evaluate_folders_started_together_stay_apart(tmp_path, monkeypatch):
    """Evaluations started in the same second each get their own folder."""
    import datetime as dt
    from concurrent.futures import ThreadPoolExecutor

    import iddpm_pl.evaluate as evaluate_module

    class FrozenClock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(evaluate_module, "datetime", FrozenClock)
    ckpt = tmp_path / "last.ckpt"
    with ThreadPoolExecutor(max_workers=8) as pool:
        folders = list(
            pool.map(lambda _: evaluate_module.default_output_dir(tmp_path, ckpt, "test"), range(8))
        )
    base = "last_test_2026-01-02_03-04-05"
    assert sorted(f.name for f in folders) == sorted([base] + [f"{base}-{i}" for i in range(1, 8)])
    assert all(f.is_dir() and f.parent == tmp_path / "eval" for f in folders)
