"""The LightningModule that trains a UNet on the Improved DDPM objective.

It adds no diffusion math: losses, likelihood terms and sampling come from
:mod:`iddpm_pl.diffusion`; this module draws timesteps, weights the losses, keeps the EMA,
logs, and estimates the held-out bits/dim.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from iddpm_pl.diffusion import GaussianDiffusion, TimestepSampler
from iddpm_pl.ema import EMA

log = logging.getLogger(__name__)

SamplingMethod = Literal["ancestral", "ddim"]
NUM_QUARTILES = 4
# torch.compile's wrapper stores the wrapped module as ``_orig_mod``.
COMPILED_SEGMENT = "_orig_mod."


def reseed_for_rank(rank: int) -> None:
    """Reseed torch, NumPy and Python's RNGs from one draw of the torch RNG plus ``rank``.

    Every DDP process starts from the same ``seed_everything`` seed. Without a reseed, every
    rank would draw the same t, noise and dropout masks for its own images. It is called on
    ranks above 0 only, so rank 0 keeps the stream of a single-process run.
    """
    seed = int(torch.randint(0, 2**62, ())) + rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def match_compiled_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """Rename the keys of ``state_dict`` in place to match ``module``'s, ``_orig_mod.`` aside.

    ``torch.compile(net)`` returns a wrapper whose state_dict keys carry an ``_orig_mod.``
    segment. This load pre-hook renames them, so such a checkpoint loads into an unwrapped
    net and a plain checkpoint loads into a wrapped one.
    """
    own = {key.replace(COMPILED_SEGMENT, ""): key for key in module.state_dict()}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        target = own.get(key[len(prefix) :].replace(COMPILED_SEGMENT, ""))
        if target is not None and prefix + target != key and prefix + target not in state_dict:
            state_dict[prefix + target] = state_dict.pop(key)


class DiffusionModule(pl.LightningModule):
    """Train ``net`` with ``diffusion.training_losses`` and keep an EMA of its weights.

    Args:
        net: the network, called as ``net(x_t, t_model, y=labels)`` (``y`` only when
            ``class_conditional``); its output channels must match the variance type.
        diffusion: the training diffusion (its loss type decides the objective).
        timestep_sampler: draws t and the importance weights; the importance-sampler
            callback updates it from the per-step VLB terms.
        optimizer: a partial optimizer, called with the parameters (Hydra ``_partial_``).
        ema_rate: EMA decay; ``ema_warmup`` ramps it up as ``(1 + n) / (10 + n)``.
        class_conditional: pass the batch labels to the network as ``y``.
        val_seed: seed of the validation noise and timesteps, so every validation pass
            sees the same draws and never touches the global RNG of training.
        compile_net: compile ``net`` in place with ``torch.compile`` when fitting starts
            (training forward and backward only; the EMA copy stays eager). Off by
            default: on the 2-core CPU it did not speed up a step (docs/benchmarks.md).
        channels_last: store the conv weights of ``net`` and its EMA copy channels_last,
            so convolutions run NHWC. Off by default: slower on the CPU (docs/benchmarks.md).
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        timestep_sampler: TimestepSampler,
        optimizer: Callable[..., torch.optim.Optimizer],
        ema_rate: float = 0.9999,
        ema_warmup: bool = False,
        class_conditional: bool = False,
        val_seed: int = 1234,
        compile_net: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if timestep_sampler.num_timesteps != diffusion.num_timesteps:
            raise ValueError(
                f"timestep sampler has T = {timestep_sampler.num_timesteps} but the diffusion "
                f"has T = {diffusion.num_timesteps}; build both from the same num_timesteps"
            )
        if channels_last:
            # Before the EMA copy is made, so that it inherits the layout.
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.diffusion = diffusion
        self.timestep_sampler = timestep_sampler
        self.optimizer_factory = optimizer
        self.ema = EMA(net, rate=ema_rate, warmup=ema_warmup)
        self.compile_net = compile_net
        self.net_compiled = False
        # A checkpoint of a net wrapped by torch.compile has ``_orig_mod.`` in its keys.
        self.register_load_state_dict_pre_hook(match_compiled_keys)
        self.class_conditional = class_conditional
        self.val_seed = val_seed
        self.val_bpd = MeanMetric()
        self.val_prior_bpd = MeanMetric()
        # (t, vb) of the last training batch, detached, for the importance-sampler callback.
        self.last_timesteps: torch.Tensor | None = None
        self.last_vb: torch.Tensor | None = None

    # ------------------------------------------------------------------ helpers

    def model_kwargs(self, labels: torch.Tensor) -> dict[str, Any]:
        """Return the extra network arguments for a batch: the labels when conditional."""
        return {"y": labels} if self.class_conditional else {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.net.parameters())

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.world_size > 1 and self.global_rank > 0:
            reseed_for_rank(self.global_rank)
        if stage == "fit" and self.compile_net:
            self.compile_network()

    def compile_network(self) -> None:
        """Compile ``net`` in place (``nn.Module.compile``), once; its EMA copy stays eager.

        In place, so the state_dict keys keep their names and a checkpoint loads the same
        with or without compilation. Called in ``setup``, inside every (spawned) process.
        """
        if not self.net_compiled:
            # Static shapes: the training batch size is fixed (the last batch is dropped).
            self.net.compile(dynamic=False)
            self.net_compiled = True

    # ------------------------------------------------------------------ training

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x_start, labels = batch
        n = x_start.shape[0]
        # t is drawn on the CPU, so the per-quartile counts below need no device sync.
        t_cpu, weights = self.timestep_sampler.sample(n, device="cpu")
        t = t_cpu.to(self.device, non_blocking=True)
        weights = weights.to(self.device, non_blocking=True)

        losses = self.diffusion.training_losses(
            self.net, x_start, t, model_kwargs=self.model_kwargs(labels)
        )
        loss = (losses["loss"] * weights).mean()

        self.last_timesteps = t.detach()
        self.last_vb = losses["vb"].detach()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mse", losses["mse"].mean())
        self.log("train/vb", losses["vb"].mean())
        self._log_quartiles(t_cpu, losses)
        return loss

    def _log_quartiles(self, t_cpu: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """Log mse and vb averaged within each quarter of the chain (``q0`` is near t = 0)."""
        quartile_cpu = t_cpu * NUM_QUARTILES // self.diffusion.num_timesteps
        quartile = quartile_cpu.to(self.device, non_blocking=True)
        for q in range(NUM_QUARTILES):
            count = int((quartile_cpu == q).sum())
            if count == 0:
                continue
            mask = (quartile == q).float()
            for name in ("mse", "vb"):
                value = (losses[name].detach() * mask).sum() / count
                self.log(f"train/{name}_q{q}", value, batch_size=count)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.net)

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Estimate the held-out NLL bound: ``T * L_t`` at uniform t plus the prior term.

        Averaged over the split, ``T * L_t`` with t uniform is an unbiased estimate of
        ``L_0 + ... + L_{T-1}``; the EMA network is the one evaluated.
        """
        x_start, labels = batch
        t, noise = self.validation_draws(x_start)
        x_t = self.diffusion.q_sample(x_start, t, noise)
        output = self.diffusion.call_model(
            self.ema.module, x_t, t, self.model_kwargs(labels)
        ).float()
        # Clipping the x_0 prediction to [-1, 1] defines the reverse process whose bound
        # `evaluate` reports, so the two numbers estimate the same quantity.
        vb, _ = self.diffusion.vb_terms_bpd(output, x_start, x_t, t, clip_denoised=True)
        prior = self.diffusion.prior_bpd(x_start)
        self.val_bpd.update(self.diffusion.num_timesteps * vb + prior)
        self.val_prior_bpd.update(prior)
        self.log("val/bpd", self.val_bpd, prog_bar=True)
        self.log("val/prior_bpd", self.val_prior_bpd)

    def validation_draws(self, x_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``t`` int64 ``[N]`` and ``noise`` ``[N, C, H, W]`` for a validation batch.

        Each image gets its own generator, seeded with a hash of ``val_seed`` and its pixels,
        so its draws do not depend on the batch, the order or the DDP rank that it lands in.
        The estimate over a split is therefore the same for any batch size and number of
        processes.
        """
        images = x_start.detach().float().cpu().contiguous()
        key = str(self.val_seed).encode()
        t = torch.empty(images.shape[0], dtype=torch.int64)
        noise = torch.empty(images.shape)
        for i, image in enumerate(images):
            digest = hashlib.blake2b(image.numpy().tobytes(), digest_size=8, key=key).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
            t[i] = torch.randint(0, self.diffusion.num_timesteps, (), generator=generator)
            noise[i] = torch.randn(image.shape, generator=generator)
        return t.to(self.device), noise.to(self.device)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        steps: str | int | None = None,
        method: SamplingMethod = "ancestral",
        eta: float = 0.0,
        labels: torch.Tensor | None = None,
        seed: int | None = None,
        use_ema: bool = True,
        progress: bool = False,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """Draw ``[num_samples, C, H, W]`` images in [-1, 1] from the (EMA) network.

        ``steps`` respaces the chain (``None`` keeps all T); ``method`` is ``ancestral`` or
        ``ddim`` (with ``eta``). With a ``seed`` every draw comes from a private generator
        (the same images for the same seed, and the global RNG untouched). ``net`` runs in
        place of the EMA or raw network, for example a compiled copy of it.
        """
        if method not in ("ancestral", "ddim"):
            raise ValueError(
                f"unknown sampling method {method!r}; valid choices are ancestral, ddim"
            )
        diffusion = self.diffusion if steps is None else self.diffusion.respace(str(steps))
        if net is None:
            net = self.ema.module if use_ema else self.net
        shape = (num_samples, *self.image_shape)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(shape, generator=generator, device=self.device)
        kwargs: dict[str, Any] = {}
        if self.class_conditional:
            if labels is None:
                raise ValueError(
                    "a class-conditional model needs labels to sample; pass labels=[N] int64"
                )
            kwargs["y"] = labels.to(self.device)
        was_training = net.training
        net.eval()
        try:
            common = dict(noise=noise, model_kwargs=kwargs, generator=generator, progress=progress)
            if method == "ddim":
                return diffusion.ddim_sample_loop(net, shape, eta=eta, **common)
            return diffusion.p_sample_loop(net, shape, **common)
        finally:
            net.train(was_training)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the network was built for."""
        net = self.net
        return (int(net.in_channels), int(net.image_size), int(net.image_size))

    # ------------------------------------------------------------------ checkpointing

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Saved so that a resumed run draws the same t, noise and dropout masks as an
        # uninterrupted one (Lightning restores model, optimizer and loops, not the RNGs).
        # Plain tensors, numbers and lists only, so the file loads with weights_only=True.
        _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        version, python_state, gauss = random.getstate()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": {"version": version, "state": list(python_state), "gauss": gauss},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            log.warning("checkpoint has no RNG states; the resumed run draws new random numbers")
            return
        torch.set_rng_state(states["torch"])
        numpy_state = states["numpy"]
        np.random.set_state(
            (
                "MT19937",
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        python_state = states["python"]
        random.setstate(
            (python_state["version"], tuple(python_state["state"]), python_state["gauss"])
        )
        # The file contains rank 0's states, so every other DDP rank moves off that stream.
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and self.global_rank > 0:
            reseed_for_rank(self.global_rank)
