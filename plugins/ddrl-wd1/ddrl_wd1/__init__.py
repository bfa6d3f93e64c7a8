"""ddrl-wd1: the wd1 objective (arXiv 2507.08838) for ddrl, registered as ``wd1``."""

from ddrl_wd1.objective import WD1, WD1Config, WD1Weights, wd1_loss, wd1_weights

__all__ = ["WD1", "WD1Config", "WD1Weights", "wd1_loss", "wd1_weights"]
