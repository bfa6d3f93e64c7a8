"""`block`: LLaDA's semi-autoregressive sampler with low-confidence remasking (docs/samplers.md).

The completion is split into blocks of ``block_length`` filled left to right in
``steps / num_blocks`` steps each. At every step the policy scores the whole canvas; a candidate
token is drawn at each position by float64 Gumbel-max at temperature tau (argmax at tau = 0); its
confidence is the untempered softmax probability of the candidate (or a uniform random number);
only still-masked positions of the current block compete, and the top ``n_i`` of each row are
revealed, where the block's masks are spread evenly over its steps, remainder first. Revealed
tokens never change. With ``cfg_scale > 0`` the logits are ``u + (s + 1)(c - u)`` where ``u`` comes
from the canvas with the prompt masked (classifier-free guidance).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.samplers.base import Sampler, SampleOutput, SamplerConfig, check_prompts, empty_records, masked_canvas
from ddrl.samplers.schedule import candidates, num_transfer_tokens, record_reveal, top_per_row


class BlockSamplerConfig(SamplerConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "block"
    max_completion_length: int = Field(32, ge=1, description="L, tokens generated per prompt")
    block_length: int = Field(32, ge=1)
    steps: int = Field(32, ge=1, description="denoising steps over the whole completion")
    temperature: float = Field(0.0, ge=0, description="Gumbel temperature; 0 = greedy")
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    cfg_scale: float = Field(0.0, ge=0, description="classifier-free guidance; 0 = off")

    @model_validator(mode="after")
    def _check_blocks(self) -> BlockSamplerConfig:
        if self.max_completion_length % self.block_length:
            raise ValueError(
                f"max_completion_length ({self.max_completion_length}) must be a multiple of "
                f"block_length ({self.block_length})"
            )
        num_blocks = self.max_completion_length // self.block_length
        if self.steps % num_blocks:
            raise ValueError(f"steps ({self.steps}) must be a multiple of the number of blocks ({num_blocks})")
        return self


class BlockSampler(Sampler):
    Config = BlockSamplerConfig
    config: BlockSamplerConfig

    @property
    def records(self) -> frozenset[str]:
        out = {"unmask_step", "token_logprobs", "scorer_logprobs"}
        cfg = self.config
        if cfg.steps == cfg.max_completion_length and cfg.remasking == "random" and cfg.cfg_scale == 0:
            out.add("exact_path")  # one token per step, in a uniformly random order within blocks
        return frozenset(out)

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
        mask_id = policy.mask_token_id
        prompt_mask = check_prompts(prompt_ids, prompt_mask, mask_id)
        b, p = prompt_ids.shape
        n = cfg.max_completion_length
        device = prompt_ids.device
        x, attn = masked_canvas(prompt_ids, prompt_mask, n, mask_id)
        masked = torch.ones((b, n), dtype=torch.bool, device=device)  # completion positions
        unmask_step, token_lp, scorer_lp = empty_records(b, n, len(scorers), device)

        num_blocks = n // cfg.block_length
        steps_per_block = cfg.steps // num_blocks
        step = nfe = 0
        for blk in range(num_blocks):
            lo = blk * cfg.block_length  # block columns in completion coordinates
            hi = lo + cfg.block_length
            schedule = num_transfer_tokens(masked[:, lo:hi].sum(1), steps_per_block)
            for i in range(steps_per_block):
                # Only the current block competes, so only its columns are scored.
                logits = self._logits(policy, x, attn, prompt_mask)[:, p + lo : p + hi]
                nfe += 2 if cfg.cfg_scale > 0 else 1
                candidate, confidence = candidates(logits, masked[:, lo:hi], cfg.temperature, cfg.remasking, generator)
                reveal = top_per_row(confidence, schedule[:, i])  # (B, Lb)
                record_reveal(reveal, candidate, logits, token_lp[:, lo:hi], unmask_step[:, lo:hi], step)
                for scorer, lp in zip(scorers, scorer_lp):
                    scored = scorer.logits(x, attn)[:, p + lo : p + hi]
                    record_reveal(reveal, candidate, scored, lp[:, lo:hi], None, step)
                    nfe += 1
                x[:, p + lo : p + hi] = torch.where(reveal, candidate, x[:, p + lo : p + hi])
                masked[:, lo:hi] &= ~reveal
                step += 1
        batch = SequenceBatch.from_parts(prompt_ids, x[:, p:], prompt_mask)
        return SampleOutput(batch, unmask_step, token_lp, scorer_lp, nfe=nfe, num_steps=step)

    def _logits(self, policy: MaskedDiffusionPolicy, x: Tensor, attn: Tensor, prompt_mask: Tensor) -> Tensor:
        if self.config.cfg_scale <= 0:
            return policy.logits(x, attn)
        unconditional = x.clone()
        unconditional[:, : prompt_mask.shape[1]][prompt_mask] = policy.mask_token_id
        both = policy.logits(torch.cat([x, unconditional]), torch.cat([attn, attn]))
        cond, uncond = both.chunk(2)
        return uncond + (self.config.cfg_scale + 1) * (cond - uncond)

