"""Mixture proposals: some rows of a batch drawn from another policy, records kept consistent.

A defensive importance-sampling proposal draws a share of each group from the reference policy
instead of the current one (``Objective.reference_share``). Those rows are sampled by the same
sampler with the other policy, which scores the current policy along its path; the records are then
relabelled so that every row reads alike whoever drew it: ``token_logprobs`` are the *current*
policy's log-probabilities along the row's path and ``scorer_logprobs[i]`` those of ``scorers[i]``
(the reference among them), as if the current policy had drawn the row and scored the others.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import Tensor

from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.samplers.base import Sampler, SampleOutput


def sample_mixture(
    sampler: Sampler,
    policy: MaskedDiffusionPolicy,
    other: MaskedDiffusionPolicy,
    prompt_ids: Tensor,
    prompt_mask: Tensor | None,
    from_other: Tensor,
    *,
    generator: torch.Generator | None = None,
    scorers: Sequence[MaskedDiffusionPolicy] = (),
) -> SampleOutput:
    """Rows where ``from_other [B]`` (bool) is True drawn from ``other``, the rest from ``policy``;
    the output in the input's row order with the records relabelled (module docstring)."""
    if not bool(from_other.any()):
        return sampler.sample(policy, prompt_ids, prompt_mask, generator=generator, scorers=scorers)
    mask = prompt_mask if prompt_mask is not None else torch.ones_like(prompt_ids, dtype=torch.bool)
    mine, theirs = (~from_other).nonzero().flatten(), from_other.nonzero().flatten()
    parts = []
    if mine.numel():
        parts.append(sampler.sample(policy, prompt_ids[mine], mask[mine], generator=generator, scorers=scorers))
    others = [policy, *(s for s in scorers if s is not other)]
    drawn = sampler.sample(other, prompt_ids[theirs], mask[theirs], generator=generator, scorers=others)
    parts.append(_relabel(drawn, other, scorers))
    if any(p.token_logprobs is None for p in parts):  # a sampler without records: keep none at all
        parts = [replace(p, token_logprobs=None, scorer_logprobs=[]) for p in parts]
    joined = type(parts[0]).cat(parts) if len(parts) > 1 else parts[0]
    order = torch.cat([mine, theirs]).argsort()  # back to the input's rows
    return joined.index(order)


def _relabel(out: SampleOutput, other: MaskedDiffusionPolicy, scorers: Sequence[MaskedDiffusionPolicy]) -> SampleOutput:
    """Records of rows ``other`` drew while scoring ``[policy, *scorers without other]``, rewritten as
    the current policy's own records scored by ``scorers``."""
    if out.token_logprobs is None or not out.scorer_logprobs:
        return replace(out, token_logprobs=None, scorer_logprobs=[])  # nothing consistent to keep
    policy_lp, rest = out.scorer_logprobs[0], iter(out.scorer_logprobs[1:])
    relabelled = [out.token_logprobs if s is other else next(rest) for s in scorers]
    return replace(out, token_logprobs=policy_lp, scorer_logprobs=relabelled)
