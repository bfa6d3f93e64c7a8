"""`ancestral`: exact random-order (ROAR / CTMC) sampling, one token per step (docs/samplers.md).

Blocks are filled left to right (``block_length = null`` means one block, a uniformly random order
over the whole completion); inside a block the order is a uniformly random permutation, drawn per
row. At each step the chosen position's token is drawn from pi(canvas) at temperature tau (argmax
at tau = 0). Every step records the untempered log-probability of the placed token under the
sampling policy and under each scoring policy, evaluated on the same canvas, so

    sum_d token_logprobs[:, d] = log p_theta(o | q; sigma)

exactly (at tau = 1 this is the sampling law itself), and the scorers give log p_ref(o | q; sigma)
along the same path: DMPO's first published weights. NFE = L per policy.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.samplers.base import Sampler, SampleOutput, SamplerConfig, check_prompts, empty_records, gumbel_argmax, masked_canvas


class AncestralSamplerConfig(SamplerConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "ancestral"
    max_completion_length: int = Field(32, ge=1)
    block_length: int | None = Field(None, ge=1, description="null = one block (pure random order)")
    temperature: float = Field(1.0, ge=0, description="1 = exact sampling; 0 = argmax per step")

    @model_validator(mode="after")
    def _check_blocks(self) -> AncestralSamplerConfig:
        if self.block_length is not None and self.max_completion_length % self.block_length:
            raise ValueError(
                f"max_completion_length ({self.max_completion_length}) must be a multiple of "
                f"block_length ({self.block_length})"
            )
        return self


class AncestralSampler(Sampler):
    Config = AncestralSamplerConfig
    records = frozenset({"unmask_step", "token_logprobs", "scorer_logprobs", "exact_path"})  # type: ignore[assignment]
    config: AncestralSamplerConfig

    @torch.no_grad()
    def sample(
        self,
        policy: MaskedDiffusionPolicy,
        prompt_ids: Tensor,
        prompt_mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        scorers: Sequence[MaskedDiffusionPolicy] = (),
    ) -> SampleOutput:
        cfg = self.config
        prompt_mask = check_prompts(prompt_ids, prompt_mask, policy.mask_token_id)
        b, p = prompt_ids.shape
        n = cfg.max_completion_length
        block = cfg.block_length or n
        device = prompt_ids.device
        rows = torch.arange(b, device=device)
        x, attn = masked_canvas(prompt_ids, prompt_mask, n, policy.mask_token_id)
        unmask_step, token_lp, scorer_lp = empty_records(b, n, len(scorers), device)

        step = 0
        for start in range(0, n, block):
            # a uniformly random order of the block's positions, independently per row
            perm = torch.rand((b, block), generator=generator, device=device).argsort(-1) + start
            for d in range(block):
                pos = perm[:, d]  # (B,) completion coordinates
                logits = policy.logits(x, attn)[rows, p + pos]  # (B, V)
                token = gumbel_argmax(logits, cfg.temperature, generator)  # (B,)
                token_lp[rows, pos] = _logprob(logits, token)
                for scorer, lp in zip(scorers, scorer_lp):
                    lp[rows, pos] = _logprob(scorer.logits(x, attn)[rows, p + pos], token)
                x[rows, p + pos] = token
                unmask_step[rows, pos] = step
                step += 1
        batch = SequenceBatch.from_parts(prompt_ids, x[:, p:], prompt_mask)
        nfe = step * (1 + len(scorers))
        return SampleOutput(batch, unmask_step, token_lp, scorer_lp, nfe=nfe, num_steps=step)


def _logprob(logits: Tensor, token: Tensor) -> Tensor:
    """``[B]`` log softmax(logits)[token] for ``logits [B, V]``."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, token[:, None]).squeeze(-1)
