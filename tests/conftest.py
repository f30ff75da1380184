"""Shared fixtures: an isolated environment and composed, shrunk training configs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

# A UNet of a few thousand parameters and a 50-step chain: a training step takes milliseconds.
TINY_OVERRIDES = [
    "model.model_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[4]",
    "model.num_groups=4",
    "model.num_heads=2",
    "diffusion.num_timesteps=50",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "logger=none",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.sample_grid.steps=5",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.every_n_steps=0",
]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep W&B offline and every tool's files out of the home folder and the repository."""
    scratch = tmp_path_factory.getbasetemp() / "env"
    scratch.mkdir(exist_ok=True)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "MPLCONFIGDIR", "IPYTHONDIR"):
        monkeypatch.setenv(name, str(scratch / name.lower()))
    monkeypatch.setenv("IDDPM_LOG_DIR", str(scratch / "logs"))
    monkeypatch.setenv("IDDPM_CACHE_DIR", str(scratch / "cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Return ``compose(*overrides, tiny=True)``: the real train config, shrunk, run dir in tmp."""
    GlobalHydra.instance().clear()
    with initialize_config_module("iddpm_pl.conf", version_base="1.3"):

        def _compose(
            *overrides: str, tiny: bool = True, output_dir: Path | None = None
        ) -> DictConfig:
            cfg = compose("train", overrides=[*(TINY_OVERRIDES if tiny else []), *overrides])
            with open_dict(cfg):
                cfg.paths.output_dir = str(output_dir or tmp_path / "run")
            return cfg

        yield _compose
    GlobalHydra.instance().clear()
