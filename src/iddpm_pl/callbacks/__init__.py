"""Lightning callbacks of iddpm_pl."""

from .importance_sampler import ImportanceSamplerCallback
from .sample_grid import SampleGridCallback
from .wandb_plots import WandbPlotsCallback

__all__ = ["ImportanceSamplerCallback", "SampleGridCallback", "WandbPlotsCallback"]
