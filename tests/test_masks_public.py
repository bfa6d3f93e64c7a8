"""The public mask schemes plugins build on (docs/objectives.md): SPG's block-wise masks, a sampler's own
trajectory (TraceRL), and per-token log-probs under a caller-given mask with gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddrl.estimators.base import MaskedViews, score_views
from ddrl.estimators.masks import blockwise_masks, trajectory_masks
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig
from ddrl.testing import generator as gen
from tests.conftest import batch_for



def within(freq: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """An empirical frequency of ``n`` draws agrees with probability ``p`` to ``sigmas`` standard errors."""
    return abs(freq - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


def pattern_frequencies(masked: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Frequency of each masked-position set among the rows of ``masked [N, L]``."""
    keys = [tuple(torch.nonzero(row).flatten().tolist()) for row in masked]
    return {k: keys.count(k) / len(keys) for k in set(keys)}


# ------------------------------------------------------------------------------------------------
# block-wise masks (SPG)


def enumerated_blockwise_patterns(length: int, block: int, p: float) -> dict[tuple[int, ...], float]:
    """Every completion mask of the block-wise scheme (all positions valid, one view) with its
    probability, by brute force: b ~ U(blocks), m ~ U{1..n_b}, a uniform m-subset of block b, each
    earlier position masked with probability p, every later position masked."""
    out: dict[tuple[int, ...], float] = {}
    blocks = [list(range(lo, min(lo + block, length))) for lo in range(0, length, block)]
    for b, positions in enumerate(blocks):
        earlier = [j for blk in blocks[:b] for j in blk]
        later = [j for blk in blocks[b + 1 :] for j in blk]
        for m in range(1, len(positions) + 1):
            for chosen in itertools.combinations(positions, m):
                for bits in itertools.product([0, 1], repeat=len(earlier)):
                    e = [j for j, bit in zip(earlier, bits) if bit]
                    prob = (1 / len(blocks)) * (1 / len(positions)) / math.comb(len(positions), m)
                    prob *= p ** len(e) * (1 - p) ** (len(earlier) - len(e))
                    key = tuple(sorted(e + list(chosen) + later))
                    out[key] = out.get(key, 0.0) + prob
    return out


def test_blockwise_mask_patterns_have_the_enumerated_probabilities():
    n, p = 20000, 0.15
    expected = enumerated_blockwise_patterns(4, 2, p)  # 2 blocks of 2
    assert math.isclose(sum(expected.values()), 1.0)
    assert expected[(2,)] == pytest.approx(0.5 * 0.5 * 0.5 * 0.85**2)  # b = 1, m = 1, block 0 clean
    views = blockwise_masks(torch.ones(n, 4, dtype=torch.bool), torch.ones(n, 2, dtype=torch.bool), 2, 1, p, gen(0))
    freq = pattern_frequencies(views.completion_masked[:, 0])
    assert set(freq) <= set(expected)
    for pattern, prob in expected.items():
        assert within(freq.get(pattern, 0.0), prob, n), (pattern, freq.get(pattern), prob)
    assert torch.equal(views.scored, views.completion_masked)  # every position valid


def test_blockwise_masks_the_real_prompt_at_rate_p_and_never_the_padding():
    n, p = 4000, 0.15
    prompt_mask = torch.tensor([[False, True, True]]).expand(n, 3)  # one left-pad position
    views = blockwise_masks(torch.ones(n, 6, dtype=torch.bool), prompt_mask, 2, 3, p, gen(1))
    real = views.prompt_masked[:, :, 1:]
    assert within(real.float().mean().item(), p, real.numel())
    assert not bool(views.prompt_masked[:, :, 0].any())


def test_blockwise_views_with_every_block_valid_see_distinct_blocks():
    views = blockwise_masks(torch.ones(200, 8, dtype=torch.bool), torch.ones(200, 1, dtype=torch.bool), 2, 4, 0.0, gen(2))
    masked = views.completion_masked  # (200, 4, 8)
    first = (masked.float().argmax(-1) // 2)  # the chosen block is the first one with a masked position
    assert torch.equal(first.sort(-1).values, torch.arange(4).expand(200, 4))


def test_blockwise_blocks_after_the_last_valid_one_fold_back_as_in_the_published_code():
    # 3 blocks of 2, valid tokens only in blocks 0 and 1: b = perm[0] % 2, so P(b = 0) = 2/3
    n = 30000
    valid = torch.tensor([[True, True, True, False, False, False]]).expand(n, 6)
    views = blockwise_masks(valid, torch.ones(n, 1, dtype=torch.bool), 2, 1, 0.0, gen(3))
    masked, scored = views.completion_masked[:, 0], views.scored[:, 0]
    b0 = masked[:, :2].any(-1)
    assert within(b0.float().mean().item(), 2 / 3, n)
    assert bool(masked[:, 3:].all()) and not bool(scored[:, 3:].any())  # after EOS: masked, never scored
    assert torch.equal(scored, masked & valid)
    # block 1 holds one valid token: when chosen it is masked (m = 1) and block 0 stays clean
    assert bool(masked[~b0, 2].all()) and not bool(masked[~b0, :2].any())


@pytest.mark.parametrize("weighting", ["inverse_masked", "elbo"])
def test_blockwise_weights_are_one_over_the_masked_count_per_view(weighting):
    k = 2
    valid = torch.tensor([[True] * 7 + [False], [True] * 3 + [False] * 5])
    views = blockwise_masks(valid, torch.ones(2, 2, dtype=torch.bool), 3, k, 0.15, gen(4), weighting)
    n = torch.tensor([7.0, 3.0])[:, None, None] if weighting == "elbo" else torch.ones(2, 1, 1)
    m = views.scored.sum(-1, keepdim=True).float()  # (B, K, 1) masked valid tokens per view
    assert bool((m >= 1).all())
    assert torch.allclose(views.weights, views.scored.float() * n / (m * k))


def test_blockwise_masks_reject_bad_arguments():
    valid, prompt = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="block_length"):
        blockwise_masks(valid, prompt, 0, 2)
    with pytest.raises(ValueError, match="p_mask_prompt"):
        blockwise_masks(valid, prompt, 2, 2, 1.5)


# ------------------------------------------------------------------------------------------------
# trajectory masks (TraceRL)


class Recorder(torch.nn.Module):
    """Wraps a policy and keeps every canvas (and attention mask) it is asked to score."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.canvases: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.policy, name)

    def logits(self, ids, attention_mask=None):
        self.canvases.append((ids.clone(), attention_mask.clone()))
        return self.policy.logits(ids, attention_mask)


def sample_recorded(policy, steps: int = 4, length: int = 8, block: int = 4):
    prompts = ["12+3", "7-1"]
    encoded = [policy.encode_prompt(p) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[0] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[False] * (width - len(e)) + [True] * len(e) for e in encoded])
    recorder = Recorder(policy)
    config = BlockSamplerConfig(max_completion_length=length, block_length=block, steps=steps, temperature=1.0)
    sampler = BlockSampler(config)
    out = sampler.sample(recorder, ids, mask, generator=gen(5))
    return out, recorder.canvases


def test_trajectory_views_with_merge_one_are_the_samplers_canvases(char_policy):
    out, canvases = sample_recorded(char_policy)  # 8 tokens, 2 per step
    views = trajectory_masks(out.batch.completion_mask, out.unmask_step, 1, out.num_steps)
    ids, attn = views.canvases(out.batch, char_policy.mask_token_id)  # (B*R, P+L), view (b, r) = row b*R+r
    r = views.num_views
    assert r == out.num_steps == len(canvases) == 4
    for step, (canvas, canvas_attn) in enumerate(canvases):
        assert torch.equal(ids[step::r], canvas)
        assert torch.equal(attn[step::r], canvas_attn)
    # each token is scored once: on the canvas it was decoded from
    assert torch.equal(views.scored.sum(1), torch.ones_like(out.unmask_step))


def test_trajectory_log_probs_with_merge_one_equal_the_samplers_recorded_log_probs(char_policy):
    out, _ = sample_recorded(char_policy)
    views = trajectory_masks(out.batch.completion_mask, out.unmask_step, 1, out.num_steps)
    per_token = (views.weights * score_views(char_policy, out.batch, views)).sum(1)
    assert torch.allclose(per_token, out.token_logprobs, atol=1e-5)


def test_trajectory_views_merge_consecutive_steps_and_score_valid_tokens_only():
    unmask_step = torch.tensor([[0, 3, 1, 2, 4]])  # 5 steps, merged in pairs: {0,1}, {2,3}, {4}
    valid = torch.tensor([[True, True, True, True, False]])
    views = trajectory_masks(valid, unmask_step, merge=2)
    want_masked = torch.tensor([[[1, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]]).bool()
    want_scored = torch.tensor([[[1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]]]).bool()
    assert torch.equal(views.completion_masked, want_masked)
    assert torch.equal(views.scored, want_scored)
    assert torch.equal(views.weights, want_scored.float())
    assert views.prompt_masked is None
    # a sampler's num_steps fixes R even when this batch never reached the last steps
    assert trajectory_masks(valid, unmask_step, 2, num_steps=8).num_views == 4


def test_trajectory_masks_reject_unrevealed_positions_and_short_num_steps():
    valid = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="revealed"):
        trajectory_masks(valid, torch.tensor([[0, -1, 1]]))
    with pytest.raises(ValueError, match="num_steps"):
        trajectory_masks(valid, torch.tensor([[0, 2, 1]]), num_steps=2)
    with pytest.raises(ValueError, match="merge"):
        trajectory_masks(valid, torch.tensor([[0, 2, 1]]), merge=0)


# ------------------------------------------------------------------------------------------------
# per-token log-probs under a caller-given mask


def test_score_views_gives_differentiable_log_probs_under_a_caller_given_mask(token_policy):
    prompt = [0, 2, 1]
    completions = torch.tensor([[2, 0, 1, 1], [0, 0, 2, 1]])
    batch = batch_for(prompt, completions)
    masked = torch.tensor([[[1, 0, 1, 1]], [[0, 1, 1, 0]]]).bool()  # (B, 1, L), chosen by hand
    scored = masked.clone()
    scored[0, 0, 3] = False  # masked but not scored
    prompt_masked = torch.tensor([[[0, 1, 0]], [[0, 0, 0]]]).bool()
    views = MaskedViews(masked, scored, scored.float(), prompt_masked)

    logp = score_views(token_policy, batch, views)  # (B, 1, L)
    for i in range(2):
        canvas = torch.tensor(prompt + completions[i].tolist())
        canvas[:3][prompt_masked[i, 0]] = token_policy.mask_token_id
        canvas[3:][masked[i, 0]] = token_policy.mask_token_id
        by_hand = torch.log_softmax(token_policy.logits(canvas[None])[0, 3:].float(), -1)
        want = by_hand[torch.arange(4), completions[i]] * scored[i, 0]
        assert torch.allclose(logp[i, 0], want, atol=1e-6)
    grads = torch.autograd.grad(logp.sum(), [p for p in token_policy.parameters() if p.requires_grad])
    assert any(float(g.abs().sum()) > 0 for g in grads)
