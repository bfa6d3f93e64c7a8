"""`coupled`: DiffuCoder's coupled-sampling estimator for coupled-GRPO (docs/objectives.md).

t ~ U[0.2, 0.8] per sequence; one view masks the completion where u < t, its partner where
u >= t, so every completion token is predicted exactly once across the pair, weighted 1/t and
1/(1-t). The published code also scores a fully masked view and averages the two estimates
((lp_full + lp_pair) / 2); ``include_full`` keeps that (default) or drops it.

Departure from the published code: t is drawn per sequence rather than once per batch.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import EstimatorConfig, LikelihoodEstimator, MaskedViews
from ddrl.estimators.masks import coupled_masks


class CoupledConfig(EstimatorConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "coupled"
    t_range: tuple[float, float] = Field((0.2, 0.8), description="mask ratio t ~ U[lo, hi]")
    include_full: bool = Field(True, description="average with a fully masked view (published)")

    @model_validator(mode="after")
    def _check(self) -> CoupledConfig:
        lo, hi = self.t_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"t_range must satisfy 0 < lo <= hi < 1, got {self.t_range}")
        return self


class CoupledEstimator(LikelihoodEstimator):
    Config = CoupledConfig
    config: CoupledConfig

    def draw(
        self, batch: SequenceBatch, generator: torch.Generator | None = None, order: Tensor | None = None
    ) -> MaskedViews:
        cfg = self.config
        return coupled_masks(batch.completion_mask, generator, cfg.t_range, cfg.include_full)
