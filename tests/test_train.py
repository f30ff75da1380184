"""Training end to end: real Hydra compositions, real Lightning trainers, real outputs."""

from __future__ import annotations

import csv
import logging
import math
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from PIL import Image

from iddpm_pl.builders import build_module
from iddpm_pl.train import train
from iddpm_pl.utils.config import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "iddpm_pl" / "conf"


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    files = list(output_dir.glob("csv/**/metrics.csv"))
    assert len(files) == 1, f"expected one metrics.csv under {output_dir}, found {files}"
    with files[0].open() as handle:
        return list(csv.DictReader(handle))


def losses_by_step(rows: list[dict[str, str]]) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


# Each option of each group once, with partners that make a valid combination.
GROUP_CASES = [
    ("schedule=linear",),
    ("schedule=cosine",),
    ("variance=fixed_small", "loss=simple"),
    ("variance=fixed_large", "loss=simple"),
    ("variance=learned", "loss=hybrid"),
    ("variance=learned_range", "loss=hybrid"),
    ("variance=fixed_small", "loss=vlb"),
    ("variance=learned_range", "loss=vlb"),
    ("sampler=uniform",),
    ("sampler=importance", "loss=vlb"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", GROUP_CASES, ids=lambda o: ",".join(o))
def test_group_option_fast_dev_run(compose_train, overrides):
    cfg = compose_train(*overrides, "trainer.fast_dev_run=true")
    result = train(cfg)
    assert result["metrics"]["train/loss"] == pytest.approx(
        result["metrics"]["train/loss"]
    )  # not NaN
    assert torch.isfinite(torch.tensor(result["metrics"]["val/bpd"]))


def test_every_group_instantiates(compose_train, tmp_path):
    data_for_model = {
        "unet_digits": "digits",
        "unet_cifar10": "cifar10",
        "unet_imagenet64": "image_folder",
    }
    assert sorted(data_for_model) == sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    for option, data in data_for_model.items():
        cfg = compose_train(f"model={option}", f"data={data}", tiny=False)
        net = hydra.utils.instantiate(cfg.model, out_channels=2 * cfg.image.channels)
        assert net.image_size == cfg.image.size
    for option in ("schedule", "variance", "loss", "sampler"):
        for choice in sorted(p.stem for p in (CONF_DIR / option).glob("*.yaml")):
            cfg = compose_train(f"{option}={choice}")
            diffusion = hydra.utils.instantiate(cfg.diffusion)
            sampler = hydra.utils.instantiate(cfg.timestep_sampler)
            assert sampler.num_timesteps == diffusion.num_timesteps
    for choice in ("csv", "wandb", "none"):
        cfg = compose_train(f"logger={choice}")
        loggers = [hydra.utils.instantiate(spec) for spec in (cfg.logger or {}).values()]
        assert len(loggers) == (0 if choice == "none" else 1)
    cfg = compose_train()
    callbacks = [hydra.utils.instantiate(spec) for spec in cfg.callbacks.values()]
    assert len(callbacks) == 5
    trainer = hydra.utils.instantiate(compose_train("trainer=cpu").trainer)
    assert trainer.max_steps == 4


def test_data_group_instantiates(compose_train, tmp_path):
    digits = hydra.utils.instantiate(compose_train("data=digits").data)
    assert (digits.image_size, digits.channels) == (8, 1)
    for choice in ("cifar10", "image_folder"):
        cfg = compose_train(f"data={choice}", f"data.data_dir={tmp_path}/missing_{choice}")
        datamodule = hydra.utils.instantiate(cfg.data)
        with pytest.raises(FileNotFoundError, match=f"missing_{choice}"):
            datamodule.check()


@pytest.mark.parametrize("experiment", ["cifar10_hybrid", "cifar10_vlb", "imagenet64_hybrid"])
def test_paper_experiments_compose(compose_train, experiment):
    cfg = compose_train(f"experiment={experiment}", tiny=False)
    assert cfg.diffusion.num_timesteps == 4000
    assert cfg.diffusion.schedule == "cosine"
    assert cfg.module.optimizer.lr == pytest.approx(1e-4)
    assert cfg.module.ema_rate == pytest.approx(0.9999)
    assert cfg.model.model_channels == 128


@pytest.mark.slow
def test_short_run_writes_outputs(compose_train, tmp_path, caplog):
    out = tmp_path / "run"
    cfg = compose_train("logger=csv", "callbacks.sample_grid.every_n_steps=2", output_dir=out)
    with caplog.at_level(logging.INFO, logger="iddpm_pl.callbacks.sample_grid"):
        result = train(cfg)

    assert Path(result["last_checkpoint"]).name == "last.ckpt"
    assert Path(result["last_checkpoint"]).is_file()
    assert Path(result["best_checkpoint"]).is_file()
    grids = sorted((out / "samples").glob("step_*.png"))
    # Steps 2 and 4 by the interval; the end of fit does not draw step 4 a second time.
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    draws = [r for r in caplog.records if r.getMessage().startswith("saved 4 EMA samples")]
    assert len(draws) == 2
    # 4 samples -> a 2x2 grid of 8x8 images with 1-pixel borders, enlarged 4 times.
    assert Image.open(grids[0]).size == (2 * 10 * 4, 2 * 10 * 4)
    assert (out / "config_tree.yaml").is_file()

    keys = set().union(*(row.keys() for row in read_metrics(out)))
    for key in ("train/loss", "train/mse", "train/vb", "val/bpd", "val/prior_bpd"):
        assert key in keys
    assert any(k.startswith("train/vb_q") for k in keys)
    assert any(k.startswith("train/mse_q") for k in keys)


@pytest.mark.slow
def test_resume_matches_uninterrupted(compose_train, tmp_path):
    common = [
        "logger=csv",
        "sampler=importance",
        "loss=vlb",
        "timestep_sampler.history_per_term=2",
        "diffusion.num_timesteps=20",
        "trainer.limit_train_batches=4",
        "trainer.val_check_interval=4",
        "model.dropout=0.1",
    ]
    train(compose_train(*common, "trainer.max_steps=8", output_dir=tmp_path / "full"))
    first = train(compose_train(*common, "trainer.max_steps=4", output_dir=tmp_path / "first"))
    resumed = train(
        compose_train(
            *common,
            "trainer.max_steps=8",
            f"ckpt_path={first['last_checkpoint']}",
            output_dir=tmp_path / "resumed",
        )
    )
    assert resumed["last_checkpoint"]
    expected = losses_by_step(read_metrics(tmp_path / "full"))
    got = losses_by_step(read_metrics(tmp_path / "resumed"))
    later = sorted(step for step in got if step >= 4)
    assert later, f"no losses logged after the resume point: {got}"
    for step in later:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"

    state = torch.load(first["last_checkpoint"], weights_only=True)["timestep_sampler"]
    assert state["history"].shape == (20, 2)
    assert int(state["counts"].max()) == 2  # full histories roll over: only the last 2 kept
    assert int(state["counts"].sum()) <= 4 * 16


def test_sampler_state_saved_in_checkpoint(compose_train, tmp_path):
    cfg = compose_train("sampler=importance", "loss=vlb", "trainer.val_check_interval=4")
    result = train(cfg)
    state = torch.load(result["last_checkpoint"], weights_only=True)["timestep_sampler"]
    # 4 steps of 16 examples over 50 steps of history 10: nothing is dropped yet.
    assert int(state["counts"].sum()) == 4 * 16
    module = build_module(cfg)
    module.timestep_sampler.load_state_dict(state)
    assert module.timestep_sampler.warmup_fraction == pytest.approx(64 / 500)


def test_bad_combination_fails_before_training(compose_train, tmp_path):
    cfg = compose_train("loss=hybrid", "variance=fixed_small", output_dir=tmp_path / "bad")
    with pytest.raises(ConfigError, match="a fixed variance has nothing to train.*learned_range"):
        train(cfg)
    assert not (tmp_path / "bad" / "checkpoints").exists()
    cfg = compose_train("loss=simple", "variance=learned_range", output_dir=tmp_path / "bad2")
    with pytest.raises(ConfigError, match="no gradient"):
        train(cfg)


def test_fused_clipping_mixed_fails_before_training(compose_train, tmp_path):
    fast = ("trainer.precision=bf16-mixed", "+module.optimizer.fused=true")
    cfg = compose_train(*fast, output_dir=tmp_path / "bad")
    with pytest.raises(ConfigError, match="Set trainer.gradient_clip_val=null"):
        train(cfg)
    assert not (tmp_path / "bad" / "checkpoints").exists()

    # The fix the message names trains.
    cfg = compose_train(*fast, "trainer.gradient_clip_val=null", "trainer.fast_dev_run=true")
    result = train(cfg)
    assert math.isfinite(result["metrics"]["train/loss"])


def test_missing_data_path_fails_before_training(compose_train, tmp_path):
    missing = tmp_path / "no_cifar_here"
    cfg = compose_train("data=cifar10", f"data.data_dir={missing}", output_dir=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no_cifar_here"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_preview_steps_checked_at_start(compose_train):
    cfg = compose_train("callbacks.sample_grid.steps=500")
    with pytest.raises(ConfigError, match="sample_grid.steps.*500"):
        train(cfg)


@pytest.mark.slow
def test_cli_runs_from_any_directory(tmp_path):
    tiny = [
        "model.model_channels=8",
        "model.channel_mult=[1,2]",
        "model.num_res_blocks=1",
        "model.num_groups=4",
        "diffusion.num_timesteps=50",
        "callbacks.sample_grid.steps=5",
        "callbacks.sample_grid.num_samples=4",
    ]
    env = {
        "IDDPM_LOG_DIR": str(tmp_path / "logs"),
        "WANDB_MODE": "offline",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "iddpm_pl.train", "debug=fast", *tiny],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    assert (runs[0] / ".hydra" / "config.yaml").is_file()

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "iddpm_pl.train",
            "debug=fast",
            "loss=hybrid",
            "variance=fixed_large",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "nothing to train" in bad.stderr
