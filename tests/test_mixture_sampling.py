"""Defensive mixture proposals: rows drawn from the reference, records relabelled consistently."""

from __future__ import annotations

import torch

from ddrl.estimators.exact import ExactConfig, ExactEstimator
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.samplers.mixture import sample_mixture
from ddrl.training.rollout import RolloutPlan

PROMPTS = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 1], [1, 2]])


def sampler() -> AncestralSampler:
    return AncestralSampler(AncestralSamplerConfig(max_completion_length=3, temperature=1.0))


def test_every_row_records_the_current_policy_and_the_scorers_along_its_own_path(token_policy, token_policy_b):
    flags = torch.tensor([False, True, False, True, True])
    out = sample_mixture(sampler(), token_policy, token_policy_b, PROMPTS, None, flags,
                         generator=torch.Generator().manual_seed(0), scorers=[token_policy_b])
    exact = ExactEstimator(ExactConfig())
    with torch.no_grad():
        current = exact.log_likelihood(token_policy, out.batch, order=out.order)
        reference = exact.log_likelihood(token_policy_b, out.batch, order=out.order)
    assert torch.allclose(out.token_logprobs.sum(-1), current, atol=1e-5)
    assert torch.allclose(out.scorer_logprobs[0].sum(-1), reference, atol=1e-5)
    assert torch.equal(out.batch.prompt_ids, PROMPTS)  # rows back in their places
    assert (reference - current).abs().min() > 1e-3  # the two policies differ: the check has teeth


def test_rows_flagged_for_the_reference_are_the_references_own_draws(token_policy, token_policy_b):
    everything = torch.ones(5, dtype=torch.bool)
    mixed = sample_mixture(sampler(), token_policy, token_policy_b, PROMPTS, None, everything,
                           generator=torch.Generator().manual_seed(1), scorers=[])
    direct = sampler().sample(token_policy_b, PROMPTS, generator=torch.Generator().manual_seed(1), scorers=[token_policy])
    assert torch.equal(mixed.completion_ids, direct.completion_ids)
    assert torch.equal(mixed.token_logprobs, direct.scorer_logprobs[0])  # relabelled: the current policy's
    assert mixed.scorer_logprobs == []
    none = sample_mixture(sampler(), token_policy, token_policy_b, PROMPTS, None, ~everything,
                          generator=torch.Generator().manual_seed(1))
    own = sampler().sample(token_policy, PROMPTS, generator=torch.Generator().manual_seed(1))
    assert torch.equal(none.completion_ids, own.completion_ids)


def test_the_reference_share_is_the_last_generations_of_every_prompt_whatever_the_chunking():
    whole = RolloutPlan(num_prompts=2, num_generations=8, chunk_size=16)
    chunked = RolloutPlan(num_prompts=2, num_generations=8, chunk_size=4, world_size=2)
    flags = whole.from_reference(0, 0.25)
    assert flags == ([False] * 6 + [True] * 2) * 2
    assert [f for c in range(4) for f in chunked.from_reference(c, 0.25)] == flags
