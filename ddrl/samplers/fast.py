"""`fast`: Fast-dLLM's block sampler with a KV cache and confidence-threshold decoding (docs/samplers.md).

Implements Fast-dLLM (Wu et al. 2025, arXiv 2505.22618) on top of the `block` sampler's blocks:

1. **Cache.** At the start of each block the whole canvas goes through ``policy.forward_cache``;
   its logits serve the block's first step and its keys/values are kept. Later steps of the block
   recompute only a window against that cache: ``prefix`` keeps the prompt and finished blocks
   and recomputes block + suffix; ``dual`` also keeps the suffix and recomputes only the block.
   Under bidirectional attention the kept keys/values are stale (they saw an older canvas), so
   the cached logits differ from ``block``'s: this is Fast-dLLM's approximation, not a bug.
2. **Parallel decoding.** With a ``threshold`` each step reveals, per row, the most confident
   masked token of the block plus every other masked token of the block whose confidence is at
   least the threshold; the block ends when it holds no mask (``steps`` is then unused). With
   ``threshold: null`` the step counts are ``block``'s fixed schedule (a block also ends once
   full: with more steps than tokens `block` runs its empty steps, `fast` skips them).

Departures from the published loop: a row whose block is full reveals nothing while other rows
finish theirs (the published code decides per batch), and ``unmask_step`` counts the steps of the
row itself, so that a row's output and trajectory do not depend on its batch; and with ``cache: none, threshold: null`` every step is a full forward, which makes
`fast` reproduce `block` token for token.

Cost: ``nfe`` counts every forward pass of the sampling policy as one, window or not (a guided
pass as two); ``full_passes`` weighs each by the fraction of canvas positions it computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.models.base import MaskedDiffusionPolicy, suppress_token
from ddrl.models.cache import KVCache
from ddrl.rows import summed
from ddrl.samplers.base import Sampler, SampleOutput, check_prompts, empty_records, masked_canvas
from ddrl.samplers.block import BlockSamplerConfig
from ddrl.samplers.schedule import candidates, num_transfer_tokens, record_reveal, top_per_row


class FastSamplerConfig(BlockSamplerConfig):
    """The `block` sampler's options plus the cache layout and the confidence threshold."""

    name: str = "fast"
    cache: Literal["none", "prefix", "dual"] = Field(
        "dual", description="none: full forward every step; prefix: keep prompt + finished blocks; "
        "dual: also keep the suffix"
    )
    threshold: float | None = Field(
        0.9, ge=0, le=1, description="reveal every masked block token this confident (plus the top one); "
        "null = block's fixed schedule of steps"
    )

    @model_validator(mode="after")
    def _check_blocks(self) -> FastSamplerConfig:
        """Like `block`'s check, but ``steps`` only matters (and is checked) without a threshold."""
        if self.max_completion_length % self.block_length:
            raise ValueError(
                f"max_completion_length ({self.max_completion_length}) must be a multiple of "
                f"block_length ({self.block_length})"
            )
        num_blocks = self.max_completion_length // self.block_length
        if self.threshold is None and self.steps % num_blocks:
            raise ValueError(f"steps ({self.steps}) must be a multiple of the number of blocks ({num_blocks}) "
                             "when threshold is null")
        return self


@dataclass
class FastSampleOutput(SampleOutput):
    """``SampleOutput`` plus the forward cost in full-canvas equivalents.

    Attributes:
        full_passes: sum over forward passes of (positions computed) / (canvas width), a guided
            pass counted twice; equals ``nfe`` without a cache. Chunks joined with ``cat`` add up.
    """

    full_passes: float = summed(0.0)


def confident_per_row(confidence: Tensor, threshold: float) -> Tensor:
    """``[B, T]`` bool: per row the most confident position plus every position with
    ``confidence >= threshold``. ``confidence [B, T]`` is ``-inf`` where a position may not be
    chosen; a row with no choosable position selects nothing."""
    has_choice = torch.isfinite(confidence).any(-1)  # (B,)
    return top_per_row(confidence, has_choice.long()) | (confidence >= threshold)


class FastSampler(Sampler):
    Config = FastSamplerConfig
    config: FastSamplerConfig

    @property
    def records(self) -> frozenset[str]:
        out = {"unmask_step", "token_logprobs", "scorer_logprobs"}
        cfg = self.config
        one_random_token_per_step = (
            cfg.steps == cfg.max_completion_length and cfg.remasking == "random" and cfg.cfg_scale == 0
        )
        if cfg.cache == "none" and cfg.threshold is None and one_random_token_per_step:
            out.add("exact_path")  # exactly `block` with fresh logits at every step
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
    ) -> FastSampleOutput:
        """Fill the completion block by block; see the module docstring for the cache and steps."""
        cfg = self.config
        if cfg.cache != "none" and not policy.supports_kv_cache:
            raise ValueError(
                f"the `fast` sampler's {cfg.cache} cache needs a policy with a key/value cache, and "
                f"{type(policy).__name__} has none (supports_kv_cache is False); set sampler.cache: none "
                "to decode it without caching"
            )
        mask_id = policy.mask_token_id
        prompt_mask = check_prompts(prompt_ids, prompt_mask, mask_id)
        b, p = prompt_ids.shape
        n, width = cfg.max_completion_length, cfg.block_length
        device = prompt_ids.device
        x, attn = masked_canvas(prompt_ids, prompt_mask, n, mask_id)
        masked = torch.ones((b, n), dtype=torch.bool, device=device)  # completion positions
        unmask_step, token_lp, scorer_lp = empty_records(b, n, len(scorers), device)
        guided = 2 if cfg.cfg_scale > 0 else 1
        steps_per_block = cfg.steps // (n // width)
        row_step = torch.zeros((b, 1), dtype=torch.long, device=device)  # steps each row took part in
        step = nfe = 0
        full_passes = 0.0
        for lo in range(0, n, width):  # block columns [lo, lo + width) in completion coordinates
            hi = lo + width
            schedule = num_transfer_tokens(masked[:, lo:hi].sum(1), steps_per_block)  # (B, S_blk)
            cache: KVCache | None = None
            i = 0
            while bool(masked[:, lo:hi].any()):
                if cache is None:  # a full forward: every step without a cache, else the block's first
                    logits, cache = self._full(policy, x, attn, prompt_mask, p + lo, p + hi)
                    computed = x.shape[1]
                else:
                    end = x.shape[1] if cfg.cache == "prefix" else p + hi
                    logits = self._window(policy, x[:, p + lo : end], p + lo, cache, attn, width)
                    computed = end - p - lo
                nfe += guided
                full_passes += guided * computed / x.shape[1]
                reveal, candidate = self._choose(logits, masked[:, lo:hi], schedule, i, generator)
                record_reveal(reveal, candidate, logits, token_lp[:, lo:hi], None, step)
                unmask_step[:, lo:hi] = torch.where(reveal, row_step, unmask_step[:, lo:hi])
                row_step += masked[:, lo:hi].any(1, keepdim=True).long()  # a full row idles: no step
                for scorer, lp in zip(scorers, scorer_lp):
                    scored = scorer.logits(x, attn)[:, p + lo : p + hi]
                    record_reveal(reveal, candidate, scored, lp[:, lo:hi], None, step)
                    nfe += 1
                    full_passes += 1
                x[:, p + lo : p + hi] = torch.where(reveal, candidate, x[:, p + lo : p + hi])
                masked[:, lo:hi] &= ~reveal
                step += 1
                i += 1
        batch = SequenceBatch.from_parts(prompt_ids, x[:, p:], prompt_mask)
        return FastSampleOutput(batch, unmask_step, token_lp, scorer_lp, nfe=nfe, num_steps=step,
                                full_passes=full_passes)

    # ----------------------------------------------------------------------------------------
    def _choose(
        self, logits: Tensor, masked: Tensor, schedule: Tensor, i: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Which block positions to reveal (``[B, Lb]`` bool) and the candidate tokens ``[B, Lb]``,
        from the block's logits ``[B, Lb, V]`` and its still-masked positions ``[B, Lb]``."""
        cfg = self.config
        candidate, confidence = candidates(logits, masked, cfg.temperature, cfg.remasking, generator)
        if cfg.threshold is None:
            return top_per_row(confidence, schedule[:, i]), candidate
        return confident_per_row(confidence, cfg.threshold), candidate

    def _full(
        self, policy: MaskedDiffusionPolicy, x: Tensor, attn: Tensor, prompt_mask: Tensor, lo: int, hi: int
    ) -> tuple[Tensor, KVCache | None]:
        """Logits ``[B, hi-lo, V]`` of canvas columns ``[lo, hi)`` from a pass over the whole canvas
        ``x [B, T]`` and, with a cache, the keys/values to keep (prefix layout: those before ``lo``)."""
        ids, mask = self._guide(x, attn, prompt_mask, policy.mask_token_id)
        if self.config.cache == "none":
            return self._combine(policy.logits(ids, mask)[:, lo:hi]), None
        raw, cache = policy.forward_cache(ids, mask)
        if self.config.cache == "prefix":
            cache = cache.truncate(lo)
        return self._combine(suppress_token(raw[:, lo:hi], policy.mask_token_id)), cache

    def _window(
        self, policy: MaskedDiffusionPolicy, window: Tensor, start: int, cache: KVCache, attn: Tensor, keep: int
    ) -> Tensor:
        """Logits ``[B, keep, V]`` of canvas columns ``[start, start+keep)``, from a pass over the
        window ``[B, S]`` that starts at column ``start``, against ``cache``."""
        if self.config.cfg_scale > 0:  # the window never holds prompt tokens: both halves see it
            window, attn = torch.cat([window, window]), torch.cat([attn, attn])
        raw = policy.forward_window(window, start, cache, attn)[:, :keep]
        return self._combine(suppress_token(raw, policy.mask_token_id))

    def _guide(self, x: Tensor, attn: Tensor, prompt_mask: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
        """With guidance, the canvas stacked on its prompt-masked copy (``[2B, T]``)."""
        if self.config.cfg_scale <= 0:
            return x, attn
        unconditional = x.clone()
        unconditional[:, : prompt_mask.shape[1]][prompt_mask] = mask_id
        return torch.cat([x, unconditional]), torch.cat([attn, attn])

    def _combine(self, logits: Tensor) -> Tensor:
        """Classifier-free guidance ``u + (s + 1)(c - u)`` of a stacked ``[2B, ...]`` pass."""
        if self.config.cfg_scale <= 0:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + (self.config.cfg_scale + 1) * (cond - uncond)
