"""Lightning callbacks of iddpm_pl."""

from .importance_sampler import ImportanceSamplerCallback
from .sample_grid import SampleGridCallback

__all__ = ["ImportanceSamplerCallback", "SampleGridCallback"]
