"""Load a trained run for sampling and evaluation: its saved config and its checkpoint.

A training run writes ``RUN/.hydra/config.yaml`` (the composed config, unresolved) and
``RUN/checkpoints/*.ckpt``. :func:`load_run` finds the config from the checkpoint path,
rebuilds the LightningModule with :func:`iddpm_pl.builders.build_module` and loads the
checkpoint's ``state_dict`` into it.

Checkpoints are read with ``torch.load(..., weights_only=True)``: the unpickler accepts
tensors, numbers, strings and plain containers only, so a crafted file cannot run code.
Every failure is raised as a ``FileNotFoundError`` or ``ValueError`` that names the file and
the fix, for the entry points to print without a traceback.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from iddpm_pl.builders import build_module
from iddpm_pl.lightning_module import DiffusionModule
from iddpm_pl.utils import resolvers  # noqa: F401  (registers the config resolvers)
from iddpm_pl.utils.config import validate_config

log = logging.getLogger(__name__)

RUN_CONFIG = Path(".hydra") / "config.yaml"
# torch.compile wraps a network and prefixes its state_dict keys with this segment.
COMPILED_PREFIX = "_orig_mod."
# Patterns of torch's weights-only unpickler messages: a rejected global, and the reason line.
UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(.+)")
# Mismatched keys shown per kind in an error message; the rest are counted.
SHOWN_KEYS = 5


@dataclass
class LoadedRun:
    """A module rebuilt from its run's config, with the checkpoint's weights loaded.

    Attributes:
        module: the ``DiffusionModule`` in eval mode, on the requested device.
        cfg: the run's config (``paths.output_dir`` set to ``run_dir``, overrides applied).
        run_dir: the folder containing ``.hydra/config.yaml``.
        ckpt_path: the checkpoint file that was loaded.
        global_step: the training step the checkpoint was saved at (``None`` if absent).
        inference_net: the network that sampling and evaluation run in place of the
            module's EMA or raw one (a compiled copy); ``None`` runs the module's own.
    """

    module: DiffusionModule
    cfg: DictConfig
    run_dir: Path
    ckpt_path: Path
    global_step: int | None
    inference_net: torch.nn.Module | None = None

    def network(self, use_ema: bool) -> torch.nn.Module:
        """Return the EMA network when ``use_ema``, else the raw one."""
        return self.module.ema.module if use_ema else self.module.net


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return ``device``, or CUDA when available for ``None`` / ``"auto"``, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device={device!r}: {error}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} requested but CUDA is not available; use cpu or auto")
    return device


def find_run_dir(ckpt_path: str | Path) -> Path:
    """Return the run folder of ``RUN/checkpoints/x.ckpt`` (or of ``RUN/x.ckpt``).

    Raises:
        FileNotFoundError: when neither folder contains ``.hydra/config.yaml``.
    """
    ckpt_path = Path(ckpt_path).expanduser()
    candidates = [ckpt_path.parent.parent, ckpt_path.parent]
    for run_dir in candidates:
        if (run_dir / RUN_CONFIG).is_file():
            return run_dir
    raise FileNotFoundError(
        f"no run config next to the checkpoint {ckpt_path}: expected "
        f"{candidates[0] / RUN_CONFIG} (a training run saves it as RUN/.hydra/config.yaml "
        "beside RUN/checkpoints/). Pass run_dir=RUN if the checkpoint was moved."
    )


def load_run_config(
    run_dir: str | Path, overrides: Sequence[str] = (), validate: bool = True
) -> DictConfig:
    """Load ``RUN/.hydra/config.yaml`` so that it resolves outside a Hydra run.

    ``paths.output_dir`` (``${hydra:runtime.output_dir}`` in the saved file) becomes
    ``run_dir``; ``overrides`` are ``key=value`` strings applied on top (e.g. a new
    ``data.data_dir`` on another machine).

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when it is not a readable config, or fails :func:`validate_config`.
    """
    run_dir = Path(run_dir).expanduser()
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"run config {path} does not exist; run_dir must be a training run's folder "
            "(the one containing .hydra/config.yaml and checkpoints/)"
        )
    try:
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            raise ValueError("the file does not contain a mapping")
        OmegaConf.update(cfg, "paths.output_dir", str(run_dir), force_add=True)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        if validate:
            validate_config(cfg)
    except (OmegaConfBaseException, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"cannot use the run config {path}: {error}") from None
    return cfg


def _unpickler_reason(error: Exception) -> str:
    """Return the reason that torch's weights-only unpickler gives inside its long message."""
    match = UNPICKLER_REASON.search(str(error))
    return match.group(1).strip() if match else _last_line(error)


def _last_line(error: Exception) -> str:
    """Return the last non-empty line of an error message (torch's are several lines long)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def require_checkpoint_file(path: str | Path) -> Path:
    """Return ``path`` as a ``Path``, or raise a FileNotFoundError unless it is a file."""
    path = Path(path).expanduser()
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"checkpoint {path} {problem}; pass ckpt_path=RUN/checkpoints/last.ckpt of a training run"
        )
    return path


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and return it as a dict.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: when the file contains objects other than tensors and plain
            containers (rejected before any of them is built), is truncated or corrupt, or
            contains no mapping.
    """
    path = require_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only=True stops at the first global it does not allow, before calling it.
        rejected = UNSUPPORTED_GLOBAL.search(str(error))
        if rejected:
            raise ValueError(
                f"rejected the checkpoint {path}: it contains {rejected.group(1)}, which is not "
                "a tensor or a plain container. Only the full unpickler builds such objects, "
                "and it can run code from the file, so checkpoints are read with "
                "weights_only=True. Re-save the weights from trusted code as plain tensors."
            ) from None
        raise ValueError(
            f"cannot read the checkpoint {path}: the file is truncated, corrupt or not a "
            f"PyTorch checkpoint ({_unpickler_reason(error)})"
        ) from None
    except Exception as error:  # zip, EOF and storage errors all mean "corrupt"
        raise ValueError(
            f"cannot read the checkpoint {path}: the file is truncated, corrupt or not a "
            f"PyTorch checkpoint ({type(error).__name__}: {_last_line(error)})"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"checkpoint {path} contains a {type(checkpoint).__name__}, not a dict; expected a "
            "Lightning checkpoint with a 'state_dict'"
        )
    return dict(checkpoint)


def extract_state_dict(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """Return the module weights of a Lightning checkpoint (or of a bare state dict)."""
    state_dict = checkpoint.get("state_dict")
    if (
        state_dict is None
        and checkpoint
        and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        state_dict = checkpoint  # saved with torch.save(module.state_dict())
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"checkpoint {path} has no 'state_dict' (keys: {sorted(checkpoint)[:10]}); "
            "expected a checkpoint written by the training run"
        )
    return dict(state_dict)


def _strip_compiled_prefix(
    state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Drop ``_orig_mod.`` segments when the checkpoint came from a ``torch.compile``d net."""
    if any(COMPILED_PREFIX in k for k in expected) or not any(
        COMPILED_PREFIX in k for k in state_dict
    ):
        return state_dict
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in state_dict.items()}


def _shown(keys: Sequence[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    ckpt_path: str | Path,
    config_path: str | Path,
) -> None:
    """Raise a ValueError listing missing, unexpected and mis-shaped keys, if any."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or mis_shaped):
        return
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {_shown(missing)}")
    if unexpected:
        parts.append(f"not in the rebuilt module: {_shown(unexpected)}")
    if mis_shaped:
        parts.append(f"shapes differ (checkpoint vs config): {_shown(mis_shaped)}")
    raise ValueError(
        f"checkpoint {ckpt_path} does not match the module built from {config_path}: "
        + "; ".join(parts)
        + ". Use the checkpoint with its own run's config (or fix run_dir / run_overrides)."
    )


def load_run(
    ckpt_path: str | Path,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | torch.device | None = "cpu",
) -> LoadedRun:
    """Rebuild a run's module from its saved config and load a checkpoint's weights.

    Args:
        ckpt_path: a checkpoint of the run, usually ``RUN/checkpoints/last.ckpt``.
        run_dir: the run folder; found from ``ckpt_path`` when ``None``.
        overrides: ``key=value`` changes to the run config (data paths, say).
        device: where the module goes (``"auto"``: CUDA when available).

    The module comes back in eval mode; EMA and raw weights are both loaded.
    """
    ckpt_path = require_checkpoint_file(ckpt_path)
    device = resolve_device(device)
    run_dir = find_run_dir(ckpt_path) if run_dir is None else Path(run_dir).expanduser()
    cfg = load_run_config(run_dir, overrides)
    config_path = run_dir / RUN_CONFIG
    try:
        module = build_module(cfg)
    except Exception as error:  # Hydra wraps the cause in its own exception
        raise ValueError(f"cannot rebuild the module from {config_path}: {error}") from None

    checkpoint = load_checkpoint_file(ckpt_path, map_location="cpu")
    expected = module.state_dict()
    state_dict = _strip_compiled_prefix(extract_state_dict(checkpoint, ckpt_path), expected)
    check_state_dict(expected, state_dict, ckpt_path, config_path)
    module.load_state_dict(state_dict, strict=True)
    module.to(device).eval()
    step = checkpoint.get("global_step")
    log.info("loaded %s (step %s) with the config of %s", ckpt_path, step, run_dir)
    return LoadedRun(
        module=module,
        cfg=cfg,
        run_dir=run_dir,
        ckpt_path=ckpt_path,
        global_step=int(step) if isinstance(step, int) else None,
    )
