"""`block_diffusion`: block-by-block decoding of a block-diffusion model (LLaDA2.x), docs/samplers.md.

The model's blocks are counted from each row's first real token, prompt included, so with left
padding and prompts of different lengths every row has its own block boundaries; the decoding is
done per row, in rounds: round k decodes, in every row, the k-th model block that holds completion
positions (the first one is partial when the prompt's real length is not a multiple of the block
size: it shares its block with the prompt's last tokens). Inside a round, each step:

1. scores the canvas up to the end of the rows' current blocks (with the cache: only the current
   blocks, against the keys/values of the finished blocks);
2. draws a candidate at every completion position (argmax at temperature 0, else float64 Gumbel-max
   from the generator; never the mask token) and takes as its confidence its untempered probability
   under the softmax with the mask token included (as the published LLaDA2.0 / 2.1 ``generate`` do);
3. reveals, per row, every masked position of the row's block whose confidence exceeds
   ``threshold`` (strictly, as the published ``generate``), and at least the ``min_tokens_per_step`` most confident ones (with
   ``steps_per_block``: at least the published ``generate``'s ``steps`` schedule entry of the
   row's step in the block instead);
4. optionally (LLaDA2.1's token editing, ``editing_threshold``) replaces already revealed tokens of
   the current block whose candidate differs and is more confident than that; the step that reveals
   a row's last mask of the block is always followed by mask-free steps (at most ``max_post_steps``),
   and the block ends at the first mask-free step that changes nothing (as the published LLaDA2.1
   ``generate``);
5. with ``eos_early_stop``, a row whose completion holds an EOS with no mask before it is finished:
   every position after that EOS becomes EOS (log-prob 0, revealed at that step) and the row is frozen.
   Without editing this is checked after every step (LLaDA2.0), with editing once the row's block is
   decoded and edited (LLaDA2.1: edits may still remove an EOS inside the block).

**Exact cache.** Under block-causal attention the keys/values of a finished block never change
(later blocks are not attended to), so they are kept and never recomputed: the first step of a
round runs the columns from the end of the cache to the end of the current blocks, and appends the
columns that precede every row's current block to the cache; the other steps run only the current
blocks. The cached run equals the uncached one (``cache: none``: a full forward each step) up to
float rounding.

Batch invariance: every decision is per row, and ``unmask_step`` counts the row's own steps (a row
whose block is done while others finish theirs takes no step), so a greedy row decodes the same
tokens alone or in a left-padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.models.base import MaskedDiffusionPolicy, suppress_token
from ddrl.models.cache import KVCache
from ddrl.samplers.base import SampleOutput, Sampler, SamplerConfig, check_prompts, empty_records, masked_canvas
from ddrl.samplers.schedule import candidates, top_per_row


def num_transfer_tokens_list(block_length: int, steps: int) -> list[int]:
    """The published LLaDA2 ``generate``'s per-step minimum: ``block_length`` split evenly over
    ``steps``, the remainder on the first steps (e.g. 8 over 3 -> [3, 3, 2]; zeros past 8 steps)."""
    base, remainder = divmod(block_length, steps)
    return [base + (i < remainder) for i in range(steps)]


class BlockDiffusionSamplerConfig(SamplerConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "block_diffusion"
    max_completion_length: int = Field(32, ge=1, description="L, tokens generated per prompt")
    temperature: float = Field(0.0, ge=0, description="Gumbel temperature; 0 = greedy")
    block_length: int | None = Field(
        None, ge=1, description="null = the model's block_size; a bidirectional model needs one (no cache then)"
    )
    threshold: float = Field(0.95, ge=0, le=1, description="reveal every masked block token more confident than this")
    min_tokens_per_step: int = Field(1, ge=1, description="and at least this many (the most confident)")
    steps_per_block: int | None = Field(
        None, ge=1, description="published LLaDA2 generate()'s `steps`: at a block's step s reveal at least entry s "
        "of block_length split evenly over these steps (remainder first) instead of min_tokens_per_step; null = off"
    )
    whole_last_block: bool = Field(
        False, description="published LLaDA2 generate(): the canvas runs to the end of the block holding the last "
        "completion position; the positions past max_completion_length are decoded with that block, then dropped"
    )
    editing_threshold: float | None = Field(
        None, gt=0, le=1, description="LLaDA2.1 token editing: replace revealed block tokens whose other "
        "candidate is more confident than this; null = off"
    )
    max_post_steps: int = Field(
        16, ge=0, description="editing: mask-free steps allowed after the step that reveals a block's last mask "
        "(the block ends at the first one that changes nothing)"
    )
    eos_early_stop: bool = Field(
        True, description="finish a row at a committed EOS with no mask before it, the rest filled with EOS "
        "(with editing: checked once the row's block is decoded and edited)"
    )
    eos_token_id: int | None = Field(None, description="null = the policy's")
    cache: Literal["auto", "exact", "none"] = Field(
        "auto", description="exact: keep finished blocks' keys/values (needs a block-causal policy with "
        "supports_block_cache); none: full forward each step; auto: exact when the policy supports it"
    )


class BlockDiffusionSampler(Sampler):
    Config = BlockDiffusionSamplerConfig
    config: BlockDiffusionSamplerConfig

    @property
    def records(self) -> frozenset[str]:
        return frozenset({"unmask_step", "token_logprobs", "scorer_logprobs"})

    def _block_size(self, policy: MaskedDiffusionPolicy) -> int:
        model_bs = getattr(policy, "block_size", None)
        cfg_bs = self.config.block_length
        if model_bs is not None and cfg_bs is not None and cfg_bs != model_bs:
            raise ValueError(f"sampler.block_length ({cfg_bs}) differs from the model's block_size ({model_bs}); "
                             "leave it null to use the model's")
        bs = cfg_bs if cfg_bs is not None else model_bs
        if bs is None:
            raise ValueError(f"{type(policy).__name__} is not a block-diffusion model (no block_size): "
                             "set sampler.block_length")
        return int(bs)

    def _use_cache(self, policy: MaskedDiffusionPolicy) -> bool:
        supported = bool(getattr(policy, "supports_block_cache", False))
        if self.config.cache == "exact" and not supported:
            raise ValueError(
                f"the block_diffusion sampler's exact cache needs a block-causal policy with supports_block_cache "
                f"(forward_block_cache / forward_block_window); {type(policy).__name__} has none: set "
                "sampler.cache: none (or auto)"
            )
        return self.config.cache != "none" and supported

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
        bs = self._block_size(policy)
        use_cache = self._use_cache(policy)
        mask_id = policy.mask_token_id
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else policy.eos_token_id
        early_stop = cfg.eos_early_stop and eos is not None
        editing = cfg.editing_threshold is not None
        prompt_mask = check_prompts(prompt_ids, prompt_mask, mask_id)
        b, p = prompt_ids.shape
        n = cfg.max_completion_length
        device = prompt_ids.device
        real = prompt_mask.long().sum(1)  # (B,) real prompt length
        pad = p - real
        first = real // bs  # the model block of the first completion token
        # whole_last_block: each row's canvas runs to the end of its last block (width n_c >= n)
        row_len = (real + n + bs - 1) // bs * bs - real if cfg.whole_last_block else torch.full_like(real, n)
        n_c = int(row_len.max())
        x, attn = masked_canvas(prompt_ids, prompt_mask, n_c, mask_id)
        cols = torch.arange(n_c, device=device)
        round_of = (real[:, None] + cols) // bs - first[:, None]  # (B, n_c) round k decodes round_of == k
        round_of = torch.where(cols < row_len[:, None], round_of, -1)  # past a row's last block: never decoded
        min_reveal = (torch.tensor(num_transfer_tokens_list(bs, cfg.steps_per_block), dtype=torch.long, device=device)
                      if cfg.steps_per_block is not None else None)
        masked = torch.ones((b, n_c), dtype=torch.bool, device=device)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        unmask_step, token_lp, scorer_lp = empty_records(b, n_c, len(scorers), device)
        row_step = torch.zeros(b, dtype=torch.long, device=device)
        step = nfe = 0
        cache: KVCache | None = None
        for k in range(int(round_of.max()) + 1):
            rows = (round_of == k).any(1) & ~finished
            if not bool(rows.any()):
                continue
            # canvas columns of each row's block k; the window covers them all
            block_lo = pad + (first + k) * bs
            block_hi = torch.clamp(block_lo + bs, max=p + n_c)
            start = int(block_lo[rows].min())
            end = int(block_hi[rows].max())
            a, w = max(start, p) - p, end - p  # completion columns [a, w) are scored
            post = torch.zeros(b, dtype=torch.long, device=device)
            edited = torch.zeros(b, dtype=torch.bool, device=device)
            round_start = row_step.clone()
            while True:
                current = (round_of[:, a:w] == k) & ~finished[:, None]  # (B, w - a)
                still = current & masked[:, a:w]
                has_mask = still.any(1)
                # editing: a row keeps stepping while its block has a mask, then for at most max_post_steps
                # mask-free steps, until one of them changes nothing (`edited` is True after a step that began
                # with a mask, so the step that reveals the block's last mask is always followed by one)
                may_edit = current.any(1) & (has_mask | (edited & (post < cfg.max_post_steps)))
                if not editing:
                    may_edit = torch.zeros_like(may_edit)
                if not bool((has_mask | may_edit).any()):
                    break
                scores, cache = self._logits(policy, x, attn, p + a, start, end, cache, use_cache)
                nfe += 1
                # candidates and records: the mask token suppressed (it is never drawn); the confidence, as
                # in the published generate: the candidate's probability with the mask token in the softmax
                logits = suppress_token(scores, mask_id)
                candidate, _ = candidates(logits, still, cfg.temperature, "low_confidence", generator)
                prob = F.softmax(scores.double(), dim=-1).gather(-1, candidate[..., None]).squeeze(-1)
                confidence = torch.where(still, prob, -torch.inf)
                if min_reveal is None:
                    k_row = torch.clamp(still.sum(1), max=cfg.min_tokens_per_step)
                else:  # the published schedule, indexed by the row's step in this block (>= 1 past its end)
                    s_row = torch.clamp(row_step - round_start, max=min_reveal.numel())
                    k_min = torch.cat([min_reveal, min_reveal.new_ones(1)]).clamp(min=1)[s_row]
                    k_row = torch.minimum(still.sum(1), k_min)
                reveal = (top_per_row(confidence, k_row) | (confidence > cfg.threshold)) & still
                change = reveal
                if editing:
                    edit = (current & ~masked[:, a:w] & (candidate != x[:, p + a : end]) & (prob > cfg.editing_threshold)
                            & may_edit[:, None])
                    post += (may_edit & ~has_mask).long()
                    edited = edit.any(1) | has_mask
                    change = reveal | edit
                lp = F.log_softmax(logits.float(), dim=-1).gather(-1, candidate[..., None]).squeeze(-1)
                token_lp[:, a:w] = torch.where(change, lp, token_lp[:, a:w])
                unmask_step[:, a:w] = torch.where(change, row_step[:, None], unmask_step[:, a:w])
                for scorer, slp in zip(scorers, scorer_lp):
                    scored = scorer.logits(x, attn)[:, p + a : end]
                    s_lp = F.log_softmax(scored.float(), dim=-1).gather(-1, candidate[..., None]).squeeze(-1)
                    slp[:, a:w] = torch.where(change, s_lp, slp[:, a:w])
                    nfe += 1
                x[:, p + a : end] = torch.where(change, candidate, x[:, p + a : end])
                masked[:, a:w] &= ~reveal
                row_step += change.any(1).long()
                step += 1
                if early_stop and not editing:
                    self._stop_at_eos(x[:, p:], masked, finished, unmask_step, token_lp, scorer_lp, row_step, eos)
            if early_stop and editing:  # LLaDA2.1: checked once a row's block is decoded and edited
                self._stop_at_eos(x[:, p:], masked, finished, unmask_step, token_lp, scorer_lp, row_step, eos)
        batch = SequenceBatch.from_parts(prompt_ids, x[:, p : p + n], prompt_mask)
        return SampleOutput(batch, unmask_step[:, :n], token_lp[:, :n], [lp[:, :n] for lp in scorer_lp], nfe=nfe,
                            num_steps=step)

    # ----------------------------------------------------------------------------------------
    def _logits(
        self, policy: MaskedDiffusionPolicy, x: Tensor, attn: Tensor, lo: int, start: int, end: int,
        cache: KVCache | None, use_cache: bool,
    ) -> tuple[Tensor, KVCache | None]:
        """The model's logits ``[B, end-lo, V]`` of canvas columns ``[lo, end)`` (the mask token not
        suppressed; ``lo >= start``) and the cache of columns ``[0, start)``, which every row has
        finished (exact under block-causal attention)."""
        if not use_cache:
            return policy(x, attn)[:, lo:end], None
        if cache is None:  # the first step: the prompt and the first blocks
            raw_logits, full = policy.forward_block_cache(x[:, :end], attn[:, :end])  # type: ignore[attr-defined]
            return raw_logits[:, lo:end], full.truncate(start)
        cached = cache.length
        if cached > start:
            raise AssertionError(f"the cache holds {cached} columns but the window starts at {start}")
        raw_logits, attended = policy.forward_block_window(  # type: ignore[attr-defined]
            x[:, cached:end], cached, cache, attn[:, :end]
        )
        if cached < start:  # a new round: keep the columns every row has finished
            cache = attended.truncate(start)
        return raw_logits[:, lo - cached :], cache

    @staticmethod
    def _stop_at_eos(
        completion: Tensor, masked: Tensor, finished: Tensor, unmask_step: Tensor, token_lp: Tensor,
        scorer_lp: list[Tensor], row_step: Tensor, eos: int,
    ) -> None:
        """Finish (in place) the rows whose completion holds an EOS with no mask before it: every
        position after the first EOS becomes EOS, revealed at the row's last step with log-prob 0."""
        is_eos = (completion == eos) & ~masked
        cols = torch.arange(completion.shape[1], device=completion.device)
        first_eos = torch.where(is_eos, cols, completion.shape[1]).min(1).values  # (B,)
        clear_before = ~(masked & (cols < first_eos[:, None])).any(1)
        done = ~finished & (first_eos < completion.shape[1]) & clear_before
        if not bool(done.any()):
            return
        fill = done[:, None] & (cols > first_eos[:, None])
        completion[fill] = eos
        masked[fill] = False
        unmask_step[fill] = (row_step - 1).clamp(min=0)[:, None].expand_as(unmask_step)[fill]
        token_lp[fill] = 0.0
        for lp in scorer_lp:
            lp[fill] = 0.0
        finished |= done
