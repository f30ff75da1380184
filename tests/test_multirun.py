"""Hydra sweeps through the real CLI: the basic sweeper, and Optuna over submitit."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from iddpm_pl.train import main
from iddpm_pl.utils.config import ConfigError
from iddpm_pl.utils.multirun import config_flags
from iddpm_pl.utils.wandb_reader import find_runs

# A tiny model and 4 steps per job, so a job costs little beyond starting Python.
TINY_JOB = [
    "model.model_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[4]",
    "model.num_groups=4",
    "model.num_heads=2",
    "diffusion.num_timesteps=50",
    "data.batch_size=16",
    "data.eval_batch_size=256",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.sample_grid.steps=5",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.every_n_steps=0",
]


def run_cli(tmp: Path, *overrides: str, timeout_s: int = 400) -> subprocess.CompletedProcess:
    """Run ``python -m iddpm_pl.train`` in ``tmp``, offline, with its logs under ``tmp/logs``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "IDDPM_"))}
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp / "wandb_dir"),
        WANDB_CONFIG_DIR=str(tmp / "wandb_config"),
        WANDB_CACHE_DIR=str(tmp / "wandb_cache"),
        MPLCONFIGDIR=str(tmp / "mpl"),
        IDDPM_LOG_DIR=str(tmp / "logs"),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "iddpm_pl.train", *overrides],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def sweep_dir(tmp: Path) -> Path:
    (directory,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    return directory


def final_val_bpd(job: Path) -> float:
    (metrics,) = job.glob("csv/**/metrics.csv")
    with metrics.open() as handle:
        values = [row["val/bpd"] for row in csv.DictReader(handle) if row.get("val/bpd")]
    return float(values[-1])


@pytest.mark.slow
def test_sweep_goes_on_after_failed_job(tmp_path):
    # Job 1 requests batches larger than the train split, so its train loader raises inside
    # fit, after its W&B run has started.
    job = [o for o in TINY_JOB if not o.startswith("data.batch_size=")]
    done = run_cli(tmp_path, "-m", "logger=wandb", "data.batch_size=16,5000,8", *job)
    assert done.returncode == 0, done.stderr[-4000:]
    sweep = sweep_dir(tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2"]

    log_text = (sweep / "1" / "train.log").read_text()
    assert "job 1 failed" in log_text
    assert "fewer than batch_size=5000" in log_text
    for ok in ("0", "2"):  # job 2 ran after the failure
        assert (sweep / ok / "checkpoints" / "last.ckpt").is_file()
        assert "failed" not in (sweep / ok / "train.log").read_text()

    runs = {job: find_runs(sweep / job / "wandb") for job in jobs}
    assert all(len(found) == 1 for found in runs.values()), runs
    ids = {job: found[0].run_id for job, found in runs.items()}
    assert len(set(ids.values())) == 3
    assert [runs[job][0].exit_code for job in jobs] == [0, 1, 0]
    assert {runs[job][0].group for job in jobs} == {f"train-{sweep.name}"}
    assert runs["2"][0].config["data"]["batch_size"] == 8


def test_single_run_raises(compose_train):
    # Outside a sweep, main lets errors through (the CLI exits non-zero).
    with pytest.raises(ConfigError, match="no gradient"):
        main(compose_train("loss=simple", "variance=learned_range"))


@pytest.mark.slow
def test_optuna_trials_through_submitit(tmp_path):
    # Two Optuna trials launched together, each as its own process by submitit_local.
    done = run_cli(
        tmp_path,
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.gpus_per_node=0",
        "logger=csv",
        *TINY_JOB,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    sweep = sweep_dir(tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit")
    assert [job.name for job in jobs] == ["0", "1"]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()

    values = [final_val_bpd(job) for job in jobs]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(values), rel=1e-6)
    searched = {"schedule", "module.optimizer.lr", "module.ema_rate", "model.dropout"}
    assert set(results["best_params"]) == searched
    trials = [yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) for job in jobs]
    assert trials[0] != trials[1]


def test_slurm_launcher_takes_ranks_from_trainer():
    GlobalHydra.instance().clear()
    with initialize_config_module("iddpm_pl.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
            ],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4
    assert launcher.gpus_per_node == 4
    assert launcher.nodes == 2


def test_rank_command_keeps_config_flags():
    argv = ["-m", "--config-name", "train", "-cd=/tmp/conf", "schedule=linear,cosine", "-cp", "x"]
    assert config_flags(argv) == ["--config-name", "train", "-cd=/tmp/conf", "-cp", "x"]
