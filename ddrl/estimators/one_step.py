"""`one_step`: d1's single-pass per-token estimator (docs/objectives.md).

One view per sequence: every completion token masked, each real prompt token masked with
probability ``p_mask_prompt`` (0.15 in d1), one forward pass; the per-token estimate is
log pi(view)_{l, o_l}. Draw the views once per inner iteration and score old, reference and
current policy on them (d1 shares the mask seed between the three).
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import EstimatorConfig, LikelihoodEstimator, MaskedViews
from ddrl.estimators.masks import one_step_masks


class OneStepConfig(EstimatorConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "one_step"
    p_mask_prompt: float = Field(0.15, ge=0, le=1, description="probability of masking each prompt token")


class OneStepEstimator(LikelihoodEstimator):
    Config = OneStepConfig
    config: OneStepConfig

    def draw(
        self, batch: SequenceBatch, generator: torch.Generator | None = None, order: Tensor | None = None
    ) -> MaskedViews:
        return one_step_masks(batch.completion_mask, batch.prompt_mask, self.config.p_mask_prompt, generator)
