"""Data-parallel training on the CPU: 2 processes over gloo, started by the real CLI.

Inside pytest, ``strategy=ddp`` would re-run the pytest session as rank 1, so the DDP run
is a subprocess: one multirun of two jobs with ``trainer=ddp_cpu``, which also checks that
every sweep job starts its own second rank exactly once. ``DDPRecorder`` (loaded by the
subprocesses from this file) saves, per job and rank, what the tests compare.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from iddpm_pl.builders import build_datamodule, build_module
from iddpm_pl.diffusion import LossSecondMomentResampler
from iddpm_pl.utils.wandb_reader import find_runs

log = logging.getLogger(__name__)

TESTS_DIR = Path(__file__).resolve().parent
BATCH_SIZE = 16
MAX_STEPS = 20
# Digits has 1,797 images, so a val fraction of 0.0995 gives 179, which two ranks cannot
# split evenly. Batches of 89 give rank 0 two batches and rank 1 one.
VAL_FRACTION = 0.0995
VAL_IMAGES = 179
EVAL_BATCH_SIZE = 89
NUM_TIMESTEPS = 25
HISTORY = 5

DDP_SWEEP = [
    "-m",
    "trainer=ddp_cpu",
    "schedule=linear,cosine",
    "logger=wandb",
    "sampler=importance",
    "loss=vlb",
    # T = 25 (the linear schedule needs T > 20) with 5 values per step: warm after about
    # 125 draws, and 32 are drawn per step.
    f"diffusion.num_timesteps={NUM_TIMESTEPS}",
    f"timestep_sampler.history_per_term={HISTORY}",
    "model.model_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[4]",
    "model.num_groups=4",
    "model.num_heads=2",
    f"data.batch_size={BATCH_SIZE}",
    f"data.val_fraction={VAL_FRACTION}",
    f"data.eval_batch_size={EVAL_BATCH_SIZE}",
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=5",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.sample_grid.every_n_steps=10",
    "callbacks.sample_grid.steps=5",
    "callbacks.sample_grid.num_samples=4",
    "+callbacks.recorder._target_=test_ddp.DDPRecorder",
]


class DDPRecorder(pl.Callback):
    """Save what one rank did to ``<out_root>/<job folder>/rank<r>.pt`` at the end of fit.

    Recorded: every ``(t, vb)`` pair passed to ``timestep_sampler.update`` (the gathered
    values), every local ``(t, vb)`` of this rank, the final sampler state, the images and
    ``val/bpd`` of the last validation pass, and the job's schedule and output directory.
    """

    def __init__(self, out_root: str) -> None:
        self.out_root = Path(out_root)
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.local: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.val_images: list[torch.Tensor] = []
        self.last_val: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = pl_module.timestep_sampler
        update = sampler.update

        def recording_update(t: torch.Tensor, losses: torch.Tensor) -> None:
            self.updates.append((t.detach().cpu().clone(), losses.detach().cpu().clone()))
            update(t, losses)

        sampler.update = recording_update

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.local.append((pl_module.last_timesteps.cpu(), pl_module.last_vb.cpu()))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.val_images = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val_images.append(batch[0].cpu())

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.last_val = {
                "bpd": float(trainer.callback_metrics["val/bpd"]),
                "step": trainer.global_step,
                "images": torch.cat(self.val_images),
                # The weights this validation used, independent of when checkpoints are saved.
                "state_dict": {
                    k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()
                },
            }

    def on_fit_end(self, trainer, pl_module) -> None:
        out_dir = self.out_root / Path(trainer.default_root_dir).name
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"rank{trainer.global_rank}.pt"
        record = {
            "world_size": trainer.world_size,
            "output_dir": str(trainer.default_root_dir),
            "betas": pl_module.diffusion.betas.cpu(),
            "sampler": pl_module.timestep_sampler.state_dict(),
            "updates": self.updates,
            "local": self.local,
            "val": self.last_val,
        }
        torch.save(record, path)
        log.info("recorded rank %d into %s", trainer.global_rank, path)


def subprocess_env(tmp: Path) -> dict[str, str]:
    """Return a clean environment for the CLI: offline W&B in tmp, this folder importable."""
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
        PYTHONPATH=os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]),
    )
    return env


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the two-job DDP sweep once; return its paths, output and the records per job."""
    tmp = tmp_path_factory.mktemp("ddp")
    records = tmp / "records"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "iddpm_pl.train",
            *DDP_SWEEP,
            f"+callbacks.recorder.out_root={records}",
        ],
        cwd=tmp,
        env=subprocess_env(tmp),
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    sweeps = list((tmp / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    loaded = {
        job.name: {r: torch.load(records / job.name / f"rank{r}.pt") for r in (0, 1)}
        for job in jobs
    }
    return {"tmp": tmp, "jobs": jobs, "records": loaded, "output": done.stdout + done.stderr}


@pytest.mark.slow
def test_sweep_runs_each_job_once(ddp_sweep):
    tmp, jobs = ddp_sweep["tmp"], ddp_sweep["jobs"]
    assert [job.name for job in jobs] == ["0", "1"]
    # No rank started a run or a sweep of its own: one sweep folder, no single-run folder.
    assert not (tmp / "logs" / "train" / "runs").exists()
    assert ddp_sweep["output"].count("started DDP ranks [1] of this job") == 2
    for job in jobs:
        rank0, rank1 = ddp_sweep["records"][job.name][0], ddp_sweep["records"][job.name][1]
        assert rank0["world_size"] == rank1["world_size"] == 2
        assert rank0["output_dir"] == rank1["output_dir"] == str(job)
        assert torch.equal(rank0["betas"], rank1["betas"])
        assert "recorded rank 1" in (job / "train_rank1.log").read_text()
    schedules = [ddp_sweep["records"][job.name][0]["betas"] for job in jobs]
    assert not torch.allclose(schedules[0], schedules[1])  # linear, then cosine


@pytest.mark.slow
def test_sampler_same_on_both_ranks(ddp_sweep):
    for job, ranks in ddp_sweep["records"].items():
        rank0, rank1 = ranks[0], ranks[1]
        assert len(rank0["updates"]) == len(rank1["updates"]) == MAX_STEPS, job
        for (t0, vb0), (t1, vb1) in zip(rank0["updates"], rank1["updates"], strict=True):
            assert torch.equal(t0, t1)
            assert torch.equal(vb0, vb1)
        for key in ("history", "counts"):
            assert torch.equal(rank0["sampler"][key], rank1["sampler"][key]), (job, key)


@pytest.mark.slow
def test_sampler_matches_single_process_replay(ddp_sweep):
    for job, ranks in ddp_sweep["records"].items():
        replay = LossSecondMomentResampler(NUM_TIMESTEPS, history_per_term=HISTORY)
        for t, vb in ranks[0]["updates"]:
            replay.update(t, vb)
        assert replay.warmed_up, job  # the last steps drew t from a learned p_t
        state = ranks[0]["sampler"]
        assert torch.equal(replay.history, state["history"])
        assert torch.equal(replay.counts, state["counts"])
        uniform = torch.full((NUM_TIMESTEPS,), 1 / NUM_TIMESTEPS, dtype=torch.float64)
        assert not torch.allclose(replay.weights(), uniform)


@pytest.mark.slow
def test_gathered_batch_is_both_ranks_in_order(ddp_sweep):
    for job, ranks in ddp_sweep["records"].items():
        for step, (t, vb) in enumerate(ranks[0]["updates"]):
            assert t.shape == (2 * BATCH_SIZE,)
            for rank in (0, 1):
                local_t, local_vb = ranks[rank]["local"][step]
                assert torch.equal(t[rank * BATCH_SIZE : (rank + 1) * BATCH_SIZE], local_t), job
                assert torch.equal(vb[rank * BATCH_SIZE : (rank + 1) * BATCH_SIZE], local_vb), job


@pytest.mark.slow
def test_ranks_draw_their_own_timesteps(ddp_sweep):
    # While p_t is uniform, two ranks drawing the same 16 of 25 steps would mean they share
    # one RNG stream (and so the same noise too). Once p_t is learned it can be so peaked
    # that equal draws happen by chance.
    for job, ranks in ddp_sweep["records"].items():
        replay = LossSecondMomentResampler(NUM_TIMESTEPS, history_per_term=HISTORY)
        uniform_steps = 0
        for (t, vb), (t0, _), (t1, _) in zip(
            ranks[0]["updates"], ranks[0]["local"], ranks[1]["local"], strict=True
        ):
            if not replay.warmed_up:
                uniform_steps += 1
                assert not torch.equal(t0, t1), job
            replay.update(t, vb)
        assert uniform_steps >= 4, job


@pytest.mark.slow
def test_val_covers_split_once(ddp_sweep):
    for job in ddp_sweep["jobs"]:
        ranks = ddp_sweep["records"][job.name]
        images = [ranks[rank]["val"]["images"] for rank in (0, 1)]
        assert [len(x) for x in images] == [90, 89], job.name  # unpadded shards
        datamodule = build_datamodule(OmegaConf.load(job / ".hydra" / "config.yaml"))
        datamodule.setup()
        split = datamodule.uint8_images("val").float() / 127.5 - 1.0
        assert len(split) == VAL_IMAGES
        # The same multiset of images: none dropped, none twice.
        seen = sorted(map(tuple, torch.cat(images).flatten(1).tolist()))
        assert seen == sorted(map(tuple, split.flatten(1).tolist()))


@pytest.mark.slow
def test_val_bpd_matches_single_process(ddp_sweep, tmp_path):
    for job in ddp_sweep["jobs"]:
        ranks = ddp_sweep["records"][job.name]
        assert ranks[0]["val"]["bpd"] == ranks[1]["val"]["bpd"]  # synced across ranks
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        cfg.paths.output_dir = str(tmp_path / job.name)
        module = build_module(cfg)
        module.load_state_dict(ranks[0]["val"]["state_dict"])
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        (metrics,) = trainer.validate(module, datamodule=build_datamodule(cfg), verbose=False)
        assert metrics["val/bpd"] == pytest.approx(ranks[0]["val"]["bpd"], rel=1e-5)


@pytest.mark.slow
def test_rank_zero_writes_outputs_once(ddp_sweep):
    run_ids = []
    for job in ddp_sweep["jobs"]:
        checkpoints = sorted(p.name for p in (job / "checkpoints").iterdir())
        assert len(checkpoints) == 2, checkpoints
        assert checkpoints[1] == "last.ckpt"
        assert checkpoints[0].startswith("best-step")
        samples = sorted(p.name for p in (job / "samples").iterdir())
        assert samples == ["step_0000010.png", "step_0000020.png"]
        # Steps 10 and 20 (the end of fit does not draw step 20 again), by rank 0 alone.
        assert (job / "train.log").read_text().count("EMA samples to") == 2
        assert "EMA samples to" not in (job / "train_rank1.log").read_text()
        runs = find_runs(job / "wandb")
        assert len(runs) == 1, [r.path for r in runs]
        run_ids.append(runs[0].run_id)
        assert runs[0].config["world_size"] == 2
        assert runs[0].config["global_batch_size"] == 2 * BATCH_SIZE
        assert runs[0].config["lr"] == pytest.approx(5e-4)
        assert "lr-AdamW" in runs[0].history_keys()
    assert len(set(run_ids)) == 2


def test_val_bpd_same_for_any_batch_size(compose_train):
    # Validation draws t and noise per image, so batching cannot change the estimate; the
    # same property makes the DDP value equal the single-process one.
    cfg = compose_train()
    module, datamodule = build_module(cfg), build_datamodule(cfg)
    values = []
    for eval_batch_size in (7, 180):
        datamodule.eval_batch_size = eval_batch_size
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        (metrics,) = trainer.validate(module, datamodule=datamodule, verbose=False)
        values.append(metrics["val/bpd"])
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_validation_draws_follow_the_image(compose_train):
    module = build_module(compose_train())
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t, noise = module.validation_draws(images)
    t_rev, noise_rev = module.validation_draws(images.flip(0))
    assert torch.equal(t_rev, t.flip(0))
    assert torch.equal(noise_rev, noise.flip(0))
    assert len(set(t.tolist())) > 1  # different images, different draws
    assert noise.std().item() == pytest.approx(1.0, abs=0.25)
