"""ddrl-spg: SPG (arXiv 2510.09541) for ddrl: the objective ``spg`` and the estimator ``blockwise``."""

from ddrl_spg.estimator import BlockwiseConfig, BlockwiseEstimator
from ddrl_spg.objective import SPG, SandwichBounds, SPGConfig, sandwich_bounds, spg_loss

__all__ = ["SPG", "BlockwiseConfig", "BlockwiseEstimator", "SPGConfig", "SandwichBounds", "sandwich_bounds", "spg_loss"]
