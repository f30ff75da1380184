"""Time data-parallel training of the digits model on the CPU: 1 process against 2 DDP processes.

Each variant trains the default digits UNet (``model=unet_digits``, importance sampler,
L_vlb, T = 1000) in a fresh process with a real Lightning trainer (no validation, logger or
checkpoint) and reports, on rank 0, over the steps after a warm-up:
  1. the median wall time of a training iteration (data, forward, backward, optimizer,
     callbacks) and the images per second it gives,
  2. the median time spent in ``ImportanceSamplerCallback.on_train_batch_end`` (the
     ``all_gather`` of (t, vb) from every rank and the sampler update, timed after a
     barrier so that waiting for a slower rank is not counted), as a share of the iteration.
There are four variants: 1 process on 1 thread and 1 process on 2 threads, then 2 DDP
processes (gloo) on 1 thread each, first with the same batch per process (twice the global
batch) and then with half the batch each (the same global batch). The variants run in turn, round after
round, and each figure is the median over the rounds, so load from other processes on a
shared machine hits every variant alike and the ratios stay meaningful.

Run: python benchmarks/ddp.py [--rounds 2] [--steps 40] [--warmup 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_module

from iddpm_pl.builders import build_datamodule, build_module
from iddpm_pl.callbacks import ImportanceSamplerCallback

RESULT_PREFIX = "DDP_BENCHMARK_RESULT "


class StepTimer(pl.Callback):
    """Record the wall time between the starts of consecutive training batches."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def iteration_times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


class TimedImportanceSamplerCallback(ImportanceSamplerCallback):
    """The real gathering callback, with the time of every ``on_train_batch_end`` recorded.

    Under DDP an untimed barrier comes first: otherwise the time would include waiting for
    a slower rank, which the gradient all-reduce of the next step would wait for anyway.
    """

    def __init__(self) -> None:
        super().__init__(log_every_n_steps=10**9)
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size > 1:
            trainer.strategy.barrier()
        start = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.times.append(time.perf_counter() - start)


def run_worker(devices: int, batch: int, steps: int, warmup: int) -> None:
    """Train ``warmup + steps`` steps on ``devices`` processes; rank 0 prints a JSON result."""
    with initialize_config_module("iddpm_pl.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "sampler=importance",
                "loss=vlb",
                "logger=none",
                f"data.batch_size={batch}",
                f"trainer.max_steps={warmup + steps + 1}",
            ],
        )
    pl.seed_everything(0, verbose=False)
    timer, gather = StepTimer(), TimedImportanceSamplerCallback()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=warmup + steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[gather, timer],
    )
    trainer.fit(build_module(cfg), datamodule=build_datamodule(cfg))
    if trainer.global_rank != 0:
        return
    iteration = statistics.median(timer.iteration_times()[warmup:])
    hook = statistics.median(gather.times[warmup:])
    result = {
        "devices": devices,
        "threads": torch.get_num_threads(),
        "batch_per_process": batch,
        "global_batch": batch * devices,
        "iteration_ms": 1000 * iteration,
        "images_per_s": batch * devices / iteration,
        "gather_ms": 1000 * hook,
        "gather_share": hook / iteration,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_variant(devices: int, threads: int, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    """Run one variant in a fresh process (Lightning starts rank 1 from it) and parse its result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, os.path.abspath(__file__), "--worker", f"--devices={devices}"]
    command += [f"--batch={batch}", f"--steps={steps}", f"--warmup={warmup}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or len(lines) != 1:
        raise RuntimeError(f"variant {command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len(RESULT_PREFIX) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of every variant")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=64, help="batch per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.devices, args.batch, args.steps, args.warmup)
        return

    variants = [
        ("1 process, 1 thread", 1, 1, args.batch),
        ("1 process, 2 threads", 1, 2, args.batch),
        ("2 DDP processes, 1 thread each", 2, 1, args.batch),
        ("2 DDP processes, half batch each", 2, 1, args.batch // 2),
    ]
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in variants}
    for round_index in range(args.rounds):
        for name, devices, threads, batch in variants:
            result = run_variant(devices, threads, batch, args.steps, args.warmup)
            runs[name].append(result)
            print(f"round {round_index}, {name}: {json.dumps(result)}", flush=True)

    table = {name: median_result(results) for name, results in runs.items()}
    base = table[variants[0][0]]["images_per_s"]
    print()
    print("| variant | global batch | iteration | images/s | vs first | gather hook | share |")
    print("|---|---|---|---|---|---|---|")
    for name, r in table.items():
        print(
            f"| {name} | {r['global_batch']} | {r['iteration_ms']:.1f} ms | "
            f"{r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | "
            f"{r['gather_ms']:.2f} ms | {100 * r['gather_share']:.2f}% |"
        )


def median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the first result with every timing replaced by its median over the rounds."""
    timed = ("iteration_ms", "images_per_s", "gather_ms", "gather_share")
    return {**results[0], **{k: statistics.median(r[k] for r in results) for k in timed}}


if __name__ == "__main__":
    main()
