"""`blockwise`: SPG's block-wise masks (arXiv 2510.09541) as a ddrl estimator.

K views per completion, each built around one block b of ``block_length`` tokens: later blocks
fully masked, m ~ U{1..n_b} of block b's valid tokens masked, every still-clean earlier position
(prompt and earlier blocks) masked with probability ``p_mask_prompt`` — ddrl's public
``blockwise_masks``. The SPG objective reads the raw views (masks and log-probs); any other
objective reads the weighted estimate: ``inverse_masked`` makes ``sequence()`` SPG's ELBO side
(mean over views of the mean masked log-prob), ``elbo`` scales it by the valid length.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import EstimatorConfig, LikelihoodEstimator, MaskedViews
from ddrl.estimators.masks import Weighting, blockwise_masks


class BlockwiseConfig(EstimatorConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "blockwise"
    num_samples: int = Field(2, ge=1, description="K masked views per completion")
    block_length: int = Field(32, ge=1, description="tokens per block (the sampler's block length)")
    p_mask_prompt: float = Field(
        0.15, ge=0, le=1, description="masking rate of still-clean positions: prompt and earlier blocks"
    )
    weighting: Weighting = Field("elbo", description="inverse_masked: 1/m per view (SPG's ELBO side); elbo: n/m")


class BlockwiseEstimator(LikelihoodEstimator):
    Config = BlockwiseConfig
    config: BlockwiseConfig

    def draw(
        self, batch: SequenceBatch, generator: torch.Generator | None = None, order: Tensor | None = None
    ) -> MaskedViews:
        cfg = self.config
        return blockwise_masks(
            batch.completion_mask, batch.prompt_mask, cfg.block_length, cfg.num_samples, cfg.p_mask_prompt,
            generator, cfg.weighting,
        )
