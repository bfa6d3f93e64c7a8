"""`dream`: Dream's own decoding (``DreamGenerationMixin.diffusion_generate``; docs/samplers.md).

The whole completion is one block. Step i of S runs from time t = tau_i to s = tau_{i+1} on the grid
``tau = linspace(1, eps, S + 1)`` (float32, as the published code computes it). At every step the
policy scores the canvas and the logits of each still-masked position are transformed as Dream's
``sample_tokens`` does: divided by the temperature (when > 0), then nucleus (``top_p`` < 1) and
``top_k`` filtering. From the resulting distribution a candidate is drawn (categorical sample at
temperature > 0, the argmax at 0). Then, per ``alg``:

* ``origin``: each masked position is revealed independently with probability 1 - s/t (1 at the
  last step); the candidate is drawn only where a position is revealed.
* ``maskgit_plus`` / ``topk_margin`` / ``entropy``: every masked position gets a confidence (the
  candidate's probability; top-1 minus top-2 probability; the negative entropy) and
  ``k = int(m * (1 - s/t))`` of them are revealed (all m remaining at the last step): the k most
  confident (``alg_temp`` = 0) or k drawn without replacement from softmax(confidence / alg_temp).

Random numbers are drawn with the same torch calls, in the same order and over the same shapes as
the published loop (uniforms over the batch's masked positions, ``multinomial`` for the categorical
and the position draws), so one seeded generator reproduces the published tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.samplers.base import SampleOutput, Sampler, SamplerConfig, check_prompts, empty_records, masked_canvas
from ddrl.samplers.schedule import record_reveal, top_per_row

Alg = Literal["origin", "maskgit_plus", "topk_margin", "entropy"]


class DreamSamplerConfig(SamplerConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "dream"
    max_completion_length: int = Field(32, ge=1, description="L, tokens generated per prompt (max_new_tokens)")
    steps: int = Field(32, ge=1, description="denoising steps S")
    eps: float = Field(1e-3, gt=0, lt=1, description="last time of the grid linspace(1, eps, S + 1)")
    alg: Alg = "entropy"
    alg_temp: float = Field(0.0, ge=0, description="0: reveal the k most confident; > 0: draw them from softmax(conf / alg_temp)")
    temperature: float = Field(0.0, ge=0, description="0 = argmax candidates")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus filter on the logits; None or 1 = off")
    top_k: int | None = Field(None, ge=1, description="keep the top_k logits; None = off (Dream's code gets 50 by default)")


def filter_logits(logits: Tensor, temperature: float, top_p: float | None, top_k: int | None) -> Tensor:
    """Dream's logit transform: divide by the temperature (if > 0), then nucleus, then top-k.

    Removed entries get the dtype's lowest finite value (probability 0 after the softmax). The
    nucleus keeps the smallest prefix of the sorted distribution whose mass exceeds ``top_p``
    (always at least the most likely token); top-k keeps every logit not below the k-th largest.
    """
    if temperature > 0:
        logits = logits / temperature
    lowest = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        ordered, where = torch.sort(logits, descending=True)
        mass_before = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1)
        drop_sorted = torch.zeros_like(mass_before, dtype=torch.bool)
        drop_sorted[..., 1:] = mass_before[..., :-1] > top_p  # a token goes once the mass before it exceeds top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, where, drop_sorted)
        logits = logits.masked_fill(drop, lowest)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, lowest)
    return logits


def draw_candidates(probs: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One token per row of ``probs [N, V]``: a categorical draw (temperature > 0) or the argmax."""
    if temperature > 0 and probs.shape[0] > 0:
        normalised = probs / probs.sum(-1, keepdim=True)
        return torch.multinomial(normalised, 1, replacement=True, generator=generator).squeeze(-1)
    return probs.argmax(-1)


def confidence_of(alg: Alg, probs: Tensor, candidate: Tensor) -> Tensor:
    if alg == "maskgit_plus":
        return probs.gather(-1, candidate[:, None]).squeeze(-1)
    if alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    return (probs * torch.log(probs + 1e-10)).sum(-1)  # entropy: the negative entropy


class DreamSampler(Sampler):
    Config = DreamSamplerConfig
    config: DreamSamplerConfig

    @property
    def records(self) -> frozenset[str]:
        return frozenset({"unmask_step", "token_logprobs", "scorer_logprobs"})

    def schedule(self) -> Tensor:
        """``[S + 1]`` float32 time grid linspace(1, eps, S + 1)."""
        return torch.linspace(1, self.config.eps, self.config.steps + 1)

    def reveal_counts(self, num_masked: Tensor, step: int) -> Tensor:
        """Tokens to reveal at ``step`` for rows with ``num_masked`` masks (the confidence algorithms):
        int(m * (1 - s/t)) in float32 arithmetic, everything left at the last step."""
        if step == self.config.steps - 1:
            return num_masked.long()
        grid = self.schedule().to(num_masked.device)
        t, s = grid[step], grid[step + 1]
        return (num_masked.float() * (1 - s / t)).long()

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
        masked = torch.ones((b, n), dtype=torch.bool, device=device)
        unmask_step, token_lp, scorer_lp = empty_records(b, n, len(scorers), device)
        grid = self.schedule().to(device)
        nfe = 0
        for i in range(cfg.steps):
            logits = policy.logits(x, attn)[:, p:]  # (B, L, V), position j predicts token j
            nfe += 1
            candidate = x[:, p:].clone()
            if cfg.alg == "origin":
                chance = 1 - grid[i + 1] / grid[i] if i < cfg.steps - 1 else 1.0
                u = torch.rand(int(masked.sum()), device=device, generator=generator)
                reveal = torch.zeros_like(masked)
                reveal[masked] = u < chance
                probs = F.softmax(filter_logits(logits[reveal], cfg.temperature, cfg.top_p, cfg.top_k), dim=-1)
                candidate[reveal] = draw_candidates(probs, cfg.temperature, generator)
            else:
                probs = F.softmax(filter_logits(logits[masked], cfg.temperature, cfg.top_p, cfg.top_k), dim=-1)
                drawn = draw_candidates(probs, cfg.temperature, generator)
                candidate[masked] = drawn
                confidence = torch.full((b, n), -torch.inf, dtype=probs.dtype, device=device)
                confidence[masked] = confidence_of(cfg.alg, probs, drawn)
                k = self.reveal_counts(masked.sum(1), i)
                reveal = self._choose(confidence, k, p, generator)
            record_reveal(reveal, candidate, logits, token_lp, unmask_step, i)
            for scorer, lp in zip(scorers, scorer_lp):
                record_reveal(reveal, candidate, scorer.logits(x, attn)[:, p:], lp, None, i)
                nfe += 1
            x[:, p:] = torch.where(reveal, candidate, x[:, p:])
            masked &= ~reveal
        batch = SequenceBatch.from_parts(prompt_ids, x[:, p:], prompt_mask)
        return SampleOutput(batch, unmask_step, token_lp, scorer_lp, nfe=nfe, num_steps=cfg.steps)

    def _choose(self, confidence: Tensor, k: Tensor, prompt_width: int, generator: torch.Generator | None) -> Tensor:
        """``[B, L]`` the ``k[b]`` positions of each row to reveal (confidence is -inf where unmasked)."""
        if self.config.alg_temp == 0:
            return top_per_row(confidence, k)
        chosen = torch.zeros_like(confidence, dtype=torch.bool)
        if int(k.max()) == 0:
            return chosen
        # The published loop draws one k for the batch (its rows always hold equally many masks).
        # The draw runs over the whole canvas, prompt columns at weight 0, as the published one does:
        # sampling without replacement spends random numbers on every column.
        canvas = F.pad(confidence, (prompt_width, 0), value=-torch.inf)
        weights = F.softmax(canvas / self.config.alg_temp, dim=-1)
        picks = torch.multinomial(weights, int(k.max()), replacement=False, generator=generator) - prompt_width
        take = torch.arange(picks.shape[1], device=picks.device)[None, :] < k[:, None]
        return chosen.scatter(1, picks, take)
