"""Samplers: exact sampling law (ancestral), LLaDA semantics and batch invariance (block)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from ddrl.batch import left_pad
from ddrl.estimators.exact import ExactConfig, ExactEstimator, log_likelihood_all_orders
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig
from ddrl.samplers.schedule import num_transfer_tokens, top_per_row
from ddrl.testing import CanvasRecorder
from ddrl.testing import generator as gen
from tests.conftest import all_completions, batch_for

PROMPT = [0, 2, 1]



def test_schedule_splits_masks_evenly_with_the_remainder_first():
    got = num_transfer_tokens(torch.tensor([10, 2, 8]), 4)
    assert got.tolist() == [[3, 3, 2, 2], [1, 1, 0, 0], [2, 2, 2, 2]]


def test_top_per_row_takes_a_different_count_per_row():
    conf = torch.tensor([[0.1, 0.9, -torch.inf, 0.5], [0.3, 0.2, 0.1, 0.0]])
    got = top_per_row(conf, torch.tensor([2, 1]))
    assert got.tolist() == [[False, True, False, True], [True, False, False, False]]


# ------------------------------------------------------------------------------------------------
# ancestral


def test_ancestral_sample_frequencies_match_exact_probabilities(token_policy):
    n = 30000
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=3, temperature=1.0))
    prompts = torch.tensor(PROMPT).expand(n, -1)
    out = sampler.sample(token_policy, prompts, generator=gen(0))
    index = (out.completion_ids * torch.tensor([9, 3, 1])).sum(-1)
    observed = torch.bincount(index, minlength=27).double()
    with torch.no_grad():
        batch = batch_for(PROMPT, all_completions(3, 3))
        exact = log_likelihood_all_orders(token_policy, batch).double().exp()
        # negative control: the left-to-right path law is a different distribution
        left_to_right = ExactEstimator(ExactConfig()).log_likelihood(
            token_policy, batch, order=torch.arange(3).expand(27, -1)
        ).double().exp()
    p_value = chisquare(observed.numpy(), (exact / exact.sum() * n).numpy()).pvalue
    wrong = chisquare(observed.numpy(), (left_to_right / left_to_right.sum() * n).numpy()).pvalue
    assert p_value > 1e-3, p_value
    assert wrong < 1e-6, wrong


def test_ancestral_path_logprob_equals_exact_estimator_along_the_same_order(token_policy, token_policy_b):
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=4, block_length=2))
    prompts, mask = left_pad([[0, 1], [2, 2, 1, 0]], pad_id=0)
    out = sampler.sample(token_policy, prompts, mask, generator=gen(1), scorers=[token_policy_b])
    est = ExactEstimator(ExactConfig())
    with torch.no_grad():
        ours = est.log_likelihood(token_policy, out.batch, order=out.order)
        ref = est.log_likelihood(token_policy_b, out.batch, order=out.order)
    assert torch.allclose(out.path_logprob, ours, atol=1e-5)
    assert torch.allclose(out.scorer_logprobs[0].sum(-1), ref, atol=1e-5)
    assert out.nfe == 2 * 4
    # blocks are filled left to right: every step of block 0 precedes every step of block 1
    assert bool((out.unmask_step[:, :2].max(-1).values < out.unmask_step[:, 2:].min(-1).values).all())
    assert sorted(out.unmask_step[0].tolist()) == [0, 1, 2, 3]


def test_ancestral_is_repeatable_from_a_seed(token_policy):
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=6))
    prompts = torch.tensor(PROMPT).expand(8, -1)
    a = sampler.sample(token_policy, prompts, generator=gen(5))
    b = sampler.sample(token_policy, prompts, generator=gen(5))
    c = sampler.sample(token_policy, prompts, generator=gen(6))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.order, b.order)
    assert not torch.equal(a.order, c.order)


# ------------------------------------------------------------------------------------------------
# block


def llada_reference(policy, prompt, gen_length, block_length, steps, cfg_scale=0.0):
    """LLaDA's published `generate` loop at temperature 0 for one unpadded prompt, written out
    literally (per-row topk over the whole canvas, -inf beyond the current block)."""
    mask_id = policy.mask_token_id
    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long)
    x[0, : len(prompt)] = torch.tensor(prompt)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for nb in range(num_blocks):
        lo, hi = len(prompt) + nb * block_length, len(prompt) + (nb + 1) * block_length
        block_mask = x[:, lo:hi] == mask_id
        n = block_mask.sum(1, keepdim=True)
        counts = torch.zeros(1, steps_per_block, dtype=torch.long) + n // steps_per_block
        counts[0, : int(n % steps_per_block)] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                logits, un_logits = policy.logits(torch.cat([x, un_x])).chunk(2)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = policy.logits(x)
            x0 = logits.argmax(-1)
            p = F.softmax(logits.double(), -1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            _, select = torch.topk(confidence[0], k=int(counts[0, i]))
            x[0, select] = x0[0, select]
    return x[0, len(prompt) :]


@pytest.mark.parametrize(
    "length,block,steps,cfg", [(12, 12, 12, 0.0), (12, 4, 6, 0.0), (16, 8, 6, 0.0), (8, 4, 4, 1.5)]
)
def test_block_matches_llada_generate_at_temperature_zero(char_policy, length, block, steps, cfg):
    prompt = char_policy.encode_prompt("12+7=")
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=length, block_length=block, steps=steps, cfg_scale=cfg))
    with torch.no_grad():
        expected = llada_reference(char_policy, prompt, length, block, steps, cfg)
    got = sampler.sample(char_policy, torch.tensor([prompt]), generator=gen(0))
    assert got.completion_ids[0].tolist() == expected.tolist()
    assert got.nfe == steps * (2 if cfg else 1)


def test_block_at_temperature_zero_is_deterministic(char_policy):
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=16, block_length=8, steps=8))
    prompts, mask = left_pad([char_policy.encode_prompt("3 4 5"), char_policy.encode_prompt("9")], 0)
    a = sampler.sample(char_policy, prompts, mask, generator=gen(1))
    b = sampler.sample(char_policy, prompts, mask, generator=gen(2))
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_block_reveals_the_scheduled_count_and_never_changes_a_revealed_token(char_policy):
    length, block, steps = 12, 6, 8  # 6 masks over 4 steps per block -> [2, 2, 1, 1]
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=length, block_length=block, steps=steps))
    recorder = CanvasRecorder(char_policy)
    prompts, mask = left_pad([char_policy.encode_prompt("ab"), char_policy.encode_prompt("abcdef")], 0)
    out = sampler.sample(recorder, prompts, mask, generator=gen(3))
    p, mask_id = prompts.shape[1], char_policy.mask_token_id
    canvases = [c[:, p:] for c in recorder.canvases] + [out.completion_ids]
    assert len(canvases) == steps + 1
    for before, after in zip(canvases, canvases[1:]):
        revealed = before != mask_id
        assert torch.equal(after[revealed], before[revealed])  # revealed tokens stay
        newly = (before == mask_id) & (after != mask_id)
        assert newly.sum(-1).tolist() in ([2, 2], [1, 1])
    per_step = [(out.unmask_step == s).sum(-1).tolist() for s in range(steps)]
    assert per_step == [[2, 2], [2, 2], [1, 1], [1, 1]] * 2
    # block 0 is finished before block 1 starts
    assert bool((out.unmask_step[:, :block].max(-1).values < out.unmask_step[:, block:].min(-1).values).all())
    assert not bool((out.completion_ids == mask_id).any())


def test_block_output_of_a_prompt_is_the_same_alone_and_in_a_left_padded_batch(char_policy):
    texts = ["7+8=", "123*45-6=", "x", "hello world, 42"]
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=16, block_length=8, steps=16))
    encoded = [char_policy.encode_prompt(t) for t in texts]
    prompts, mask = left_pad(encoded, char_policy.pad_token_id)
    batched = sampler.sample(char_policy, prompts, mask, generator=gen(0))
    for row, ids in enumerate(encoded):
        alone = sampler.sample(char_policy, torch.tensor([ids]), generator=gen(0))
        assert alone.completion_ids[0].tolist() == batched.completion_ids[row].tolist()
        assert torch.allclose(alone.token_logprobs[0], batched.token_logprobs[row], atol=1e-5)


def test_block_with_one_token_per_step_records_the_exact_path_logprob(char_policy):
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=6, block_length=6, steps=6, temperature=1.0))
    prompts = torch.tensor([char_policy.encode_prompt("ab")] * 3)
    out = sampler.sample(char_policy, prompts, generator=gen(4))
    with torch.no_grad():
        exact = ExactEstimator(ExactConfig()).log_likelihood(char_policy, out.batch, order=out.order)
    assert torch.allclose(out.path_logprob, exact, atol=1e-4)


def test_block_sampling_at_positive_temperature_is_seeded(char_policy):
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=8, block_length=8, steps=8, temperature=1.0))
    prompts = torch.tensor([char_policy.encode_prompt("ab")] * 4)
    a = sampler.sample(char_policy, prompts, generator=gen(9)).completion_ids
    b = sampler.sample(char_policy, prompts, generator=gen(9)).completion_ids
    c = sampler.sample(char_policy, prompts, generator=gen(10)).completion_ids
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_block_config_rejects_lengths_that_do_not_split_into_blocks():
    with pytest.raises(ValueError, match="multiple of block_length"):
        BlockSamplerConfig(max_completion_length=30, block_length=8, steps=8)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        BlockSamplerConfig(max_completion_length=32, block_length=8, steps=6)


def test_samplers_reject_a_prompt_containing_the_mask(char_policy):
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=8, block_length=8, steps=8))
    with pytest.raises(ValueError, match="mask token"):
        sampler.sample(char_policy, torch.tensor([[2, char_policy.mask_token_id, 7]]))
