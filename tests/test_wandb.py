"""Weights & Biases, offline: what a training run logs, read back from disk with our reader."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import wandb
from PIL import Image

from iddpm_pl import train as train_module
from iddpm_pl.callbacks.wandb_plots import WandbPlotsCallback, figure_to_array, plot_vb_per_t
from iddpm_pl.train import configure_wandb_dirs, train
from iddpm_pl.utils.wandb_reader import (
    BLOCK_SIZE,
    OfflineRun,
    WandbFileError,
    iter_records,
    read_run,
)

RUN_OVERRIDES = [
    "logger=wandb",
    "sampler=importance",
    "loss=vlb",
    "tags=[smoke]",
    "callbacks.sample_grid.every_n_steps=2",
]


def finished_run(run_file: Path, timeout_s: float = 30.0) -> OfflineRun:
    """Read a run once its exit record is on disk.

    ``finish()`` can return before wandb's service process has written the records (seen
    with wandb 0.31 for the first run of a process), so the file is polled.
    """
    deadline = time.monotonic() + timeout_s
    run = read_run(run_file)
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.2)
        run = read_run(run_file)
    assert run.exit_code is not None, f"{run_file} has no exit record after {timeout_s} s"
    return run


def only_run(output_dir: Path) -> OfflineRun:
    files = sorted((output_dir / "wandb").rglob("run-*.wandb"))
    assert len(files) == 1, files
    return finished_run(files[0])


@pytest.fixture
def offline_run(compose_train, tmp_path):
    """Train 4 steps with W&B offline (validation at steps 2 and 4); return result and run."""
    result = train(compose_train(*RUN_OVERRIDES, output_dir=tmp_path / "run"))
    return result, only_run(tmp_path / "run")


@pytest.mark.slow
def test_run_logs_losses_and_metrics(offline_run):
    result, run = offline_run
    assert run.exit_code == 0
    keys = run.history_keys()
    for key in ("train/loss", "train/mse", "train/vb", "val/bpd", "val/prior_bpd", "lr-AdamW"):
        assert key in keys, key
    assert any(key.startswith("train/mse_q") for key in keys)
    assert any(key.startswith("train/vb_q") for key in keys)
    assert len(run.values("val/bpd")) == 2
    assert run.values("val/bpd")[-1] == pytest.approx(result["metrics"]["val/bpd"])
    assert run.summary["val/bpd"] == pytest.approx(result["metrics"]["val/bpd"])
    assert run.values("lr-AdamW") == [pytest.approx(5e-4)] * len(run.values("lr-AdamW"))


@pytest.mark.slow
def test_run_logs_resolved_config(offline_run):
    _, run = offline_run
    config = run.config
    assert config["diffusion"]["loss_type"] == "vlb"
    assert config["timestep_sampler"]["_target_"].endswith("LossSecondMomentResampler")
    assert config["data"]["batch_size"] == 16
    assert config["global_batch_size"] == 16
    assert config["world_size"] == 1
    assert config["lr"] == pytest.approx(5e-4)
    assert "${" not in repr(config)  # resolved, no interpolations left
    assert run.group == "cosine-learned_range-vlb"
    assert run.tags == ["cosine", "learned_range", "vlb", "smoke"]
    assert run.project == "iddpm_pl"


@pytest.mark.slow
def test_run_logs_image_files(offline_run):
    _, run = offline_run
    samples = run.media_files("samples/ema")
    # Steps 2 and 4; the end of fit does not draw step 4 again.
    assert len(samples) == 2
    for path in samples:
        # 4 samples: a 2x2 grid of 8x8 images with 1-pixel borders, not enlarged.
        assert Image.open(path).size == (20, 20)
    for key in ("plots/vb_per_t", "plots/timestep_p_t"):
        files = run.media_files(key)
        assert len(files) == 2, key  # after each of the 2 validation passes
        assert Image.open(files[0]).size == (600, 350)
    assert set(run.media_files()) == set((run.run_dir / "files" / "media").rglob("*.png"))


@pytest.mark.slow
def test_failed_run_is_finished_as_failed(compose_train, tmp_path):
    # A batch larger than the train split makes the train loader raise inside fit, after
    # the W&B run has started.
    cfg = compose_train(*RUN_OVERRIDES, "data.batch_size=5000", output_dir=tmp_path / "bad")
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(cfg)
    assert wandb.run is None  # finished, so the next run gets its own
    run = only_run(tmp_path / "bad")
    assert run.exit_code == 1
    assert run.failed

    train(compose_train(*RUN_OVERRIDES, output_dir=tmp_path / "good"))
    good = only_run(tmp_path / "good")
    assert good.exit_code == 0
    assert good.run_id != run.run_id


def write_offline_run(tmp_path: Path, config: dict, rows: int) -> Path:
    """Write a run with wandb itself, offline; return its ``.wandb`` file."""
    run = wandb.init(mode="offline", dir=tmp_path, project="reader", config=config)
    for i in range(rows):
        run.log({"x": i, "half": i / 2})
    run.finish(exit_code=3)
    (path,) = (tmp_path / "wandb").rglob("run-*.wandb")
    finished_run(path)
    return path


def test_reader_joins_records_split_over_blocks(tmp_path):
    big = "".join(chr(ord("a") + i % 26) for i in range(100_000))  # spans 4 blocks
    path = write_offline_run(tmp_path, {"big": big, "nested": {"a": 1}}, rows=3)
    assert path.stat().st_size > 3 * BLOCK_SIZE
    run = read_run(path.parent)
    assert run.config["big"] == big
    assert run.config["nested"] == {"a": 1}
    assert run.values("x") == [0, 1, 2]
    assert run.values("half") == [0, 0.5, 1]
    assert run.exit_code == 3
    assert run.project == "reader"


def test_reader_rejects_corrupt_files(tmp_path):
    path = write_offline_run(tmp_path, {"a": 1}, rows=2)
    data = bytearray(path.read_bytes())
    corrupt = tmp_path / "corrupt.wandb"
    data[200] ^= 0xFF  # inside the payload of an early record
    corrupt.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="CRC mismatch"):
        read_run(corrupt)
    not_wandb = tmp_path / "other.wandb"
    not_wandb.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(WandbFileError, match="W&B file header"):
        read_run(not_wandb)


def test_reader_skips_cut_off_tail(tmp_path):
    path = write_offline_run(tmp_path, {"a": 1}, rows=5)
    complete = list(iter_records(path))
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(path.read_bytes()[:-3])
    records = list(iter_records(cut))
    assert len(records) == len(complete) - 1
    assert records == complete[:-1]


def test_plots_window_is_per_step_mean():
    callback = WandbPlotsCallback()
    callback.accumulate(torch.tensor([0, 2, 2]), torch.tensor([1.0, 2.0, 4.0]), num_timesteps=4)
    callback.accumulate(torch.tensor([0]), torch.tensor([3.0]), num_timesteps=4)
    mean, counts = callback.window_mean()
    assert counts.tolist() == [2, 0, 2, 0]
    assert mean[0].item() == 2.0
    assert mean[2].item() == 3.0
    assert torch.isnan(mean[1])
    assert torch.isnan(mean[3])
    pixels = figure_to_array(plot_vb_per_t(mean, counts))
    assert pixels.shape == (350, 600, 3)
    assert pixels.dtype.name == "uint8"


def test_plots_reject_negative_interval():
    with pytest.raises(ValueError, match="every_n_steps must be non-negative"):
        WandbPlotsCallback(every_n_steps=-1)


def test_wandb_dirs_follow_each_run(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_wandb_dirs_set_here", {})
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    configure_wandb_dirs(tmp_path / "job0")
    configure_wandb_dirs(tmp_path / "job1")  # the next job of a multirun
    assert Path(os.environ.get("WANDB_DIR")) == tmp_path / "job1"
    assert Path(os.environ.get("WANDB_CACHE_DIR")) == tmp_path / "job1" / ".wandb_cache"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "chosen"))
    configure_wandb_dirs(tmp_path / "job2")
    assert Path(os.environ.get("WANDB_DIR")) == tmp_path / "chosen"
    assert Path(os.environ.get("WANDB_CONFIG_DIR")) == tmp_path / "job2" / ".wandb_config"
