"""Likelihood estimators against exact answers on an enumerable space (V = 3 tokens, L <= 4)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import MaskedViews, score_views
from ddrl.estimators.coupled import CoupledConfig, CoupledEstimator
from ddrl.estimators.elbo import ElboConfig, ElboEstimator, elbo_enumerated
from ddrl.estimators.exact import ExactConfig, ExactEstimator, log_likelihood_all_orders
from ddrl.estimators.masks import antithetic_masks, stratified_masks
from ddrl.estimators.one_step import OneStepConfig, OneStepEstimator
from ddrl.testing import generator as gen
from tests.conftest import all_completions, batch_for

PROMPT = [0, 2, 1]



@pytest.mark.parametrize("length", [3, 4])
def test_exact_probabilities_sum_to_one_over_every_completion(token_policy, length):
    batch = batch_for(PROMPT, all_completions(3, length))
    with torch.no_grad():
        logp = log_likelihood_all_orders(token_policy, batch)
    assert torch.logsumexp(logp.double(), 0).exp().item() == pytest.approx(1.0, abs=1e-5)
    # not uniform: the test would be vacuous if the policy ignored its input
    assert logp.max() - logp.min() > 1.0


def test_dynamic_programme_equals_log_mean_exp_over_all_orders(token_policy):
    batch = batch_for(PROMPT, all_completions(3, 3)[::4])
    est = ExactEstimator(ExactConfig())
    with torch.no_grad():
        per_order = torch.stack(
            [
                est.log_likelihood(token_policy, batch, order=torch.tensor(sigma).expand(batch.batch_size, -1))
                for sigma in itertools.permutations(range(3))
            ]
        )  # (3!, B)
        expected = torch.logsumexp(per_order, 0) - math.log(6)
        assert torch.allclose(log_likelihood_all_orders(token_policy, batch), expected, atol=1e-5)
        # the orders really differ, so averaging over them matters
        assert (per_order.max(0).values - per_order.min(0).values).max() > 0.1


def test_exact_path_equals_step_by_step_unmasking(token_policy):
    completions = torch.tensor([[2, 0, 1, 1], [0, 0, 2, 1]])
    order = torch.tensor([[2, 0, 3, 1], [1, 3, 0, 2]])
    batch = batch_for(PROMPT, completions)
    with torch.no_grad():
        got = ExactEstimator(ExactConfig()).log_likelihood(token_policy, batch, order=order)
        for row in range(2):
            canvas = torch.tensor(PROMPT + [token_policy.mask_token_id] * 4)
            total = 0.0
            for pos in order[row].tolist():
                logits = token_policy.logits(canvas[None])[0, len(PROMPT) + pos]
                total += torch.log_softmax(logits, -1)[completions[row, pos]].item()
                canvas[len(PROMPT) + pos] = completions[row, pos]
            assert got[row].item() == pytest.approx(total, abs=1e-5)


def test_elbo_is_below_log_likelihood_for_every_completion(token_policy):
    batch = batch_for(PROMPT, all_completions(3, 4))
    with torch.no_grad():
        logp = log_likelihood_all_orders(token_policy, batch)
        elbo = elbo_enumerated(token_policy, batch)
    assert bool((elbo <= logp + 1e-5).all())
    assert (logp - elbo).mean() > 1e-3  # a strict bound here, not an identity


def test_enumerated_elbo_matches_its_definition(token_policy):
    """E_{m~U{1..L}} (L/m) E_{|M|=m} sum_{d in M} log pi(o_{-M})_d, written out with itertools."""
    completion = [1, 2, 2]
    batch = batch_for(PROMPT, torch.tensor([completion]))
    n, mask = 3, token_policy.mask_token_id
    expected = 0.0
    with torch.no_grad():
        for m in range(1, n + 1):
            for subset in itertools.combinations(range(n), m):
                canvas = torch.tensor(PROMPT + [mask if i in subset else t for i, t in enumerate(completion)])
                lp = torch.log_softmax(token_policy.logits(canvas[None])[0, len(PROMPT):], -1)
                ce = sum(lp[d, completion[d]].item() for d in subset)
                expected += (1 / n) * (1 / math.comb(n, m)) * (n / m) * ce
        assert elbo_enumerated(token_policy, batch).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("scheme", ["stratified"])
def test_monte_carlo_elbo_mean_matches_enumerated_elbo(token_policy, scheme):
    completions = torch.tensor([[0, 1, 2, 2], [2, 2, 2, 0], [1, 0, 0, 1]])
    batch = batch_for(PROMPT, completions)
    draws = 400
    est = ElboEstimator(ElboConfig(num_samples=4, mask_scheme=scheme))
    big = batch_for(PROMPT, completions.repeat(draws, 1))
    with torch.no_grad():
        exact = elbo_enumerated(token_policy, batch)
        samples = est.log_likelihood(token_policy, big, gen(0)).view(draws, 3)
    mean, std = samples.mean(0), samples.std(0)
    assert bool((std > 1e-3).all())  # genuinely random
    assert torch.all((mean - exact).abs() <= 4 * std / math.sqrt(draws)), (mean, exact, std)


def test_stratified_mask_counts_are_uniform_over_one_to_length():
    n, k, rows = 5, 4, 20000
    valid = torch.ones(rows, n, dtype=torch.bool)
    views = stratified_masks(valid, k, gen(1))
    counts = views.completion_masked.sum(-1)  # (rows, K)
    freq = torch.bincount(counts.flatten(), minlength=n + 1)[1:].double() / counts.numel()
    assert torch.allclose(freq, torch.full((n,), 1 / n, dtype=torch.double), atol=0.01)
    # each draw stays inside its stratum: m_k in [floor(k n / K) + 1, floor((k + 1) n / K) + 1]
    for j in range(k):
        assert counts[:, j].min() >= math.floor(j * n / k) + 1
        assert counts[:, j].max() <= math.floor((j + 1) * n / k) + 1
    # weights: L/m per masked token, averaged over the K views
    m = counts[..., None].float()
    assert torch.allclose(views.weights, views.completion_masked.float() * n / m / k)


def test_stratified_masks_respect_valid_positions():
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    views = stratified_masks(valid, 3, gen(2))
    assert not bool(views.completion_masked[0, :, 3:].any())
    assert torch.equal(views.completion_masked.sum(-1)[0].clamp(max=3), views.completion_masked.sum(-1)[0])


def test_antithetic_masks_pair_each_mask_with_its_complement():
    valid = torch.tensor([[True] * 6 + [False] * 2] * 50)
    views = antithetic_masks(valid, 4, gen(3), rate_range=(0.1, 1.0), weighting="inverse_masked")
    masked = views.completion_masked
    assert masked.shape == (50, 4, 8)
    for pair in range(2):
        a, b = masked[:, 2 * pair], masked[:, 2 * pair + 1]
        assert torch.equal(a ^ b, valid)  # together they cover every valid token exactly once
    assert not bool(masked[..., 6:].any())
    m = masked.sum(-1, keepdim=True).clamp(min=1).float()
    assert torch.allclose(views.weights, masked.float() / m / 4)


def test_one_step_masks_whole_completion_and_prompt_at_rate_p():
    prompt_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]]).repeat(2000, 1)
    prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
    prompt_mask[:, :2] = False  # left padding is never masked
    completion = torch.zeros(2000, 4, dtype=torch.long)
    completion_mask = torch.tensor([True, True, True, False]).expand(2000, 4)
    batch = SequenceBatch.from_parts(prompt_ids, completion, prompt_mask, completion_mask)
    est = OneStepEstimator(OneStepConfig(p_mask_prompt=0.15))
    views = est.draw(batch, gen(4))
    assert views.num_views == 1 and bool(views.completion_masked.all())
    assert torch.equal(views.scored[:, 0], completion_mask)
    ids, _ = views.canvases(batch, mask_id=1)
    prompt_part = ids[:, :8] == 1
    assert not bool(prompt_part[:, :2].any())
    rate = prompt_part[:, 2:].float().mean().item()
    assert abs(rate - 0.15) < 4 * math.sqrt(0.15 * 0.85 / (2000 * 6))
    # the same seed gives the same views (shared by old, ref and current policy); another differs
    again = est.draw(batch, gen(4))
    assert torch.equal(again.prompt_masked, views.prompt_masked)
    assert not torch.equal(est.draw(batch, gen(5)).prompt_masked, views.prompt_masked)


@pytest.mark.parametrize("include_full", [False, True])
def test_coupled_pair_predicts_every_completion_token_exactly_once(include_full):
    completion_mask = torch.tensor([[True] * 7 + [False]] * 100)
    batch = SequenceBatch.from_parts(torch.zeros(100, 2, dtype=torch.long), torch.zeros(100, 8, dtype=torch.long),
                                     completion_mask=completion_mask)
    views = CoupledEstimator(CoupledConfig(include_full=include_full)).draw(batch, gen(6))
    pair = views.scored[:, -2:]  # the last two views are the coupled pair
    assert torch.equal(pair.sum(1), completion_mask.long())  # each valid token once, others never
    first = views.completion_masked[:, -2]
    rate = first[:, :7].float().mean(-1)
    w = views.weights[:, -2:]
    half = 0.5 if include_full else 1.0
    # weight 1/t on the first view's masked tokens, 1/(1-t) on its partner's; t ~ U[0.2, 0.8]
    t = half / w[:, 0][pair[:, 0]].view(-1)
    assert bool(((t >= 0.2) & (t <= 0.8)).all())
    assert abs(rate.mean().item() - 0.5) < 0.05
    if include_full:
        assert views.num_views == 3 and torch.equal(views.scored[:, 0], completion_mask)
        assert torch.allclose(views.weights[:, 0][completion_mask], torch.tensor(0.5))


def test_shared_views_make_the_log_ratio_of_a_policy_with_itself_exactly_zero(token_policy, token_policy_b):
    batch = batch_for(PROMPT, all_completions(3, 3)[:10])
    est = ElboEstimator(ElboConfig(num_samples=2, mask_scheme="antithetic"))
    with torch.no_grad():
        assert torch.equal(est.log_ratio(token_policy, token_policy, batch, gen(7)), torch.zeros(10))
        assert est.log_ratio(token_policy, token_policy_b, batch, gen(7)).abs().max() > 0.1


def test_score_views_is_independent_of_micro_batching_and_differentiable(token_policy):
    batch = batch_for(PROMPT, all_completions(3, 3)[:6])
    views = stratified_masks(batch.completion_mask, 4, gen(8))
    whole = score_views(token_policy, batch, views)
    chunked = score_views(token_policy, batch, views, micro_batch_size=5)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert bool((whole[~views.scored] == 0).all()) and bool((whole[views.scored] < 0).all())
    whole.sum().backward()
    grads = [p.grad for p in token_policy.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    token_policy.zero_grad(set_to_none=True)


def test_masked_views_reject_scoring_an_unmasked_position():
    masked = torch.zeros(1, 1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="scored position must be masked"):
        MaskedViews(masked, ~masked, torch.ones(1, 1, 3))


def test_views_of_chunks_with_different_prompt_widths_concatenate_and_slice_back(token_policy):
    """Chunks are left-padded to their own prompt width; their prompt-masking views (one_step)
    concatenate into the padded batch and each chunk's slice still scores exactly as drawn."""
    est = OneStepEstimator(OneStepConfig(p_mask_prompt=0.5))
    wide = SequenceBatch.from_parts(torch.tensor([[0, 1, 2], [2, 2, 1]]), torch.tensor([[1, 0], [0, 2]]))
    narrow = SequenceBatch.from_parts(torch.tensor([[1], [2]]), torch.tensor([[2, 2], [1, 0]]))
    views = [est.draw(b, gen(s)) for b, s in ((wide, 0), (narrow, 1))]
    joined = MaskedViews.cat(views)
    assert joined.prompt_masked.shape == (4, 1, 3)
    assert not bool(joined.prompt_masked[2:, :, :2].any())  # the narrow chunk's padding columns
    for rows, batch, own in ((slice(0, 2), wide, views[0]), (slice(2, 4), narrow, views[1])):
        mine = joined.index(rows)
        assert torch.equal(mine.canvases(batch, 3)[0], own.canvases(batch, 3)[0])
        assert torch.equal(score_views(token_policy, batch, mine), score_views(token_policy, batch, own))
