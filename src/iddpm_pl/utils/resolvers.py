"""OmegaConf resolvers used by the configs; registered on import."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """Return False only when the user opted in to online W&B with ``WANDB_MODE=online``."""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def register_resolvers() -> None:
    """Register the ``iddpm.*`` resolvers once (safe to call again)."""
    if not OmegaConf.has_resolver("iddpm.wandb_offline"):
        OmegaConf.register_new_resolver("iddpm.wandb_offline", wandb_offline)


register_resolvers()
