"""Hydra multirun glue: is this a sweep job, its W&B group, and DDP ranks for one job.

Lightning starts the other ranks of a DDP run by running the command line again with
``LOCAL_RANK`` set. Under ``-m`` that command line is the whole sweep, so every extra rank
would start a sweep of its own. :func:`job_ranks` makes each sweep job start its extra ranks
itself instead, as single runs of that job alone: the same overrides and the same output
directory, and no sweep.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

# The variables through which Lightning's default cluster environment learns the ranks.
DDP_ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra's options that choose the primary config. A rank's command line must keep them.
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# How long a job waits for its other ranks to exit before it stops them: they finish
# right after rank 0 when the job succeeded, and usually fail alongside it when it raised.
RANK_EXIT_TIMEOUT_S = 120.0
FAILED_RANK_EXIT_TIMEOUT_S = 5.0


def is_multirun() -> bool:
    """Return whether this process runs a job of a Hydra multirun (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name(task_name: str) -> str:
    """Return ``<task_name>-<sweep folder>``, which names every job of this sweep alike."""
    return f"{task_name}-{Path(HydraConfig.get().sweep.dir).name}"


def config_flags(argv: list[str]) -> list[str]:
    """Return the ``--config-*`` options of a Hydra command line, each with its value."""
    flags = []
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if name not in CONFIG_FLAGS:
            continue
        flags.append(arg)
        if "=" not in arg and i + 1 < len(argv):
            flags.append(argv[i + 1])
    return flags


def rank_command(rank: int, module: str = "iddpm_pl.train") -> list[str]:
    """Return the command line that runs this sweep job as a single run, for DDP rank ``rank``.

    It carries the job's overrides (the swept values included) and writes into the job's
    output directory. Hydra writes no second ``.hydra/`` folder and logs to its own file.
    """
    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    return [
        sys.executable,
        "-m",
        module,
        *config_flags(sys.argv[1:]),
        *hydra_cfg.overrides.task,
        f'hydra.run.dir="{output_dir}"',
        "hydra.output_subdir=null",
        f"hydra.job.name={hydra_cfg.job.name}_rank{rank}",
    ]


def launches_by_rerunning(trainer: pl.Trainer) -> bool:
    """Return whether Lightning would start this trainer's extra ranks by re-running the command."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def job_ranks(trainer: pl.Trainer) -> Iterator[None]:
    """Start ranks 1.. of a DDP sweep job as single runs of this job, and stop them after it.

    A no-op outside multirun and for trainers whose ranks come from elsewhere (one process,
    ``ddp_spawn``, torchrun, SLURM). Inside, this process becomes rank 0 of a process group on
    127.0.0.1. When the job ends, the group is destroyed, the other ranks are waited for
    (for a few seconds only if this rank raised, then stopped) and the environment is
    restored, so the next job starts a fresh group.

    NOTE: if another rank dies in the middle of a job, rank 0 waits in its next collective
    until the process group times out (``DDPStrategy(timeout=...)``, 30 minutes by default).
    """
    if not (is_multirun() and launches_by_rerunning(trainer)):
        yield
        return
    if trainer.num_nodes > 1:
        raise ValueError(
            f"trainer.num_nodes={trainer.num_nodes} under -m: a sweep job can only start ranks "
            "on this machine. Launch the jobs with hydra/launcher=slurm (one SLURM task per "
            "device on every node) or set trainer.num_nodes=1"
        )
    num_processes = trainer.strategy.launcher.num_processes
    saved_env = {name: os.environ.get(name) for name in DDP_ENV_VARS}
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        NODE_RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE=str(num_processes),
    )
    cwd = HydraConfig.get().runtime.cwd
    ranks = {
        rank: subprocess.Popen(
            rank_command(rank), env={**os.environ, "LOCAL_RANK": str(rank)}, cwd=cwd
        )
        for rank in range(1, num_processes)
    }
    log.info(
        "started DDP ranks %s of this job (pids %s)", list(ranks), [p.pid for p in ranks.values()]
    )
    failed = True
    try:
        yield
        failed = False
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        stop_ranks(ranks, FAILED_RANK_EXIT_TIMEOUT_S if failed else RANK_EXIT_TIMEOUT_S)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stop_ranks(ranks: dict[int, subprocess.Popen], timeout_s: float) -> None:
    """Wait up to ``timeout_s`` seconds for the rank processes, then stop any still running."""
    for rank, process in ranks.items():
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("DDP rank %d (pid %d) is still running: stopping it", rank, process.pid)
            process.terminate()
            try:
                process.wait(timeout=FAILED_RANK_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.returncode != 0:
            log.error("DDP rank %d of this job exited with code %d", rank, process.returncode)
