"""Step schedules, per-row selection and log-prob bookkeeping shared by the block-wise samplers
(docs/samplers.md)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ddrl.samplers.base import gumbel_argmax


def num_transfer_tokens(num_masked: Tensor, steps: int) -> Tensor:
    """``[B, steps]`` tokens to reveal per step: an even split, the remainder on the first steps.

    LLaDA's schedule: with m masks and s steps every step reveals m // s, and the first m % s
    steps reveal one more (e.g. 10 masks in 4 steps -> [3, 3, 2, 2]).
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    num_masked = num_masked.long().reshape(-1, 1)  # (B, 1)
    base, remainder = num_masked // steps, num_masked % steps
    step_index = torch.arange(steps, device=num_masked.device)[None, :]  # (1, S)
    return base + (step_index < remainder).long()


def top_per_row(confidence: Tensor, k: Tensor) -> Tensor:
    """``[B, T]`` bool selecting the ``k[b]`` highest-confidence positions of each row.

    ``confidence [B, T]`` holds ``-inf`` where a position may not be chosen; ties go to the lower
    position index.
    """
    order = torch.argsort(confidence, dim=-1, descending=True, stable=True)  # (B, T)
    rank_taken = torch.arange(confidence.shape[1], device=confidence.device)[None, :] < k[:, None]
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    return chosen.scatter(1, order, rank_taken)


def record_reveal(
    reveal: Tensor, candidate: Tensor, logits: Tensor, logprobs: Tensor, unmask_step: Tensor | None, step: int
) -> None:
    """Write, in place, the untempered log-prob (and step) of each token revealed at this step.

    All tensors cover the same block columns: ``reveal``/``candidate [B, Lb]``, ``logits [B, Lb, V]``.
    """
    lp = F.log_softmax(logits.float(), dim=-1).gather(-1, candidate[..., None]).squeeze(-1)
    logprobs[reveal] = lp[reveal]
    if unmask_step is not None:
        unmask_step[reveal] = step


def candidates(
    logits: Tensor,
    masked: Tensor,
    temperature: float,
    remasking: Literal["low_confidence", "random"],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Candidate tokens ``[B, Lb]`` drawn from the block's ``logits [B, Lb, V]`` and their
    confidence ``[B, Lb]`` (float64; ``-inf`` where ``masked`` is False, so only masked positions
    compete): the candidate's probability (``low_confidence``) or a uniform draw (``random``).
    The draws happen in this order (tokens, then confidences), which keeps samplers that share
    this step token-for-token identical under one generator."""
    candidate = gumbel_argmax(logits, temperature, generator)  # (B, Lb)
    if remasking == "low_confidence":
        confidence = F.softmax(logits.double(), dim=-1).gather(-1, candidate[..., None]).squeeze(-1)
    else:
        confidence = torch.rand(candidate.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return candidate, torch.where(masked, confidence, -torch.inf)
