"""The `fast` sampler (Fast-dLLM) and the `tiny` key/value cache it runs on.

Exact anchors: (1) a cache computed on the current canvas changes nothing; (2) a one-layer model's
cache is never stale (its layer-1 keys/values depend on the token at that position only), so there
`fast` with any cache must equal `block` token for token; (3) without cache and threshold `fast` is
`block`; (4) threshold decoding follows a literal transcription of Fast-dLLM's selection loop.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddrl.batch import left_pad
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.registry import Registry
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig
from ddrl.samplers.fast import FastSampler, FastSamplerConfig, confident_per_row
from ddrl.testing import generator as gen

TEXTS = ["7+8=", "123*45-6=", "x", "hello world, 42"]



def peaked(n_layers: int, seed: int = 3) -> TinyPolicy:
    """Random weights large enough that some confidences pass 0.9 (the threshold has teeth)."""
    arch = TinyArchitecture(d_model=48, n_layers=n_layers, n_heads=2, ffn_hidden=96, init_std=0.5)
    return TinyPolicy.fresh(arch, CharTokenizer(), seed=seed).eval()


@pytest.fixture(scope="module")
def deep_policy() -> TinyPolicy:
    return peaked(n_layers=2)


@pytest.fixture(scope="module")
def shallow_policy() -> TinyPolicy:
    return peaked(n_layers=1, seed=5)


def padded_prompts(policy: TinyPolicy, texts=TEXTS):
    return left_pad([policy.encode_prompt(t) for t in texts], policy.pad_token_id)


def canvas(policy: TinyPolicy, completion: int, seed: int = 0):
    """Left-padded prompts followed by ``completion`` random (revealed or masked) tokens."""
    ids, mask = padded_prompts(policy)
    g = gen(seed)
    tail = torch.randint(3, policy.vocab_size, (ids.shape[0], completion), generator=g)
    tail[torch.rand(tail.shape, generator=g) < 0.5] = policy.mask_token_id
    return torch.cat([ids, tail], 1), torch.cat([mask, torch.ones_like(tail, dtype=torch.bool)], 1)


def fast(**kw) -> FastSampler:
    return FastSampler(FastSamplerConfig(**kw))


def block(**kw) -> BlockSampler:
    return BlockSampler(BlockSamplerConfig(**kw))


# ------------------------------------------------------------------------------------------------
# the tiny key/value cache


@pytest.mark.parametrize("padded", [True, False])
def test_forward_cache_returns_exactly_the_logits_of_forward(char_policy, padded):
    x, attn = canvas(char_policy, 10)
    if not padded:
        x, attn = x[1:2, attn[1].logical_not().sum() :], None
    with torch.no_grad():
        logits, cache = char_policy.forward_cache(x, attn)
        assert torch.equal(logits, char_policy(x, attn))
    assert len(cache.keys) == char_policy.arch.n_layers and cache.length == x.shape[1]


@pytest.mark.parametrize("layout", ["prefix", "dual"])
@pytest.mark.parametrize("start_from_end,width", [(12, 4), (12, 12), (5, 3), (1, 1)])
def test_window_with_a_cache_of_the_current_canvas_equals_forward(char_policy, layout, start_from_end, width):
    x, attn = canvas(char_policy, 12)
    t = x.shape[1]
    start = t - start_from_end
    end = t if layout == "prefix" else start + width
    for ids, mask in ((x, attn), (x[2:3, 1:], None)):  # left padding, and a row without a mask
        s = start - (x.shape[1] - ids.shape[1])
        e = end - (x.shape[1] - ids.shape[1])
        with torch.no_grad():
            full, cache = char_policy.forward_cache(ids, mask)
            if layout == "prefix":
                cache = cache.truncate(s)
            window = char_policy.forward_window(ids[:, s:e], s, cache, mask)
        assert window.shape == (ids.shape[0], e - s, char_policy.vocab_size)
        assert torch.allclose(window, full[:, s:e], atol=1e-5), (window - full[:, s:e]).abs().max()


@pytest.mark.parametrize("layout", ["prefix", "dual"])
def test_a_one_layer_cache_is_exact_when_only_the_window_changed(shallow_policy, deep_policy, layout):
    """Layer-1 keys/values depend only on the token at their position, so with one layer a cache
    of an older canvas is still exact outside the window; with two layers it is stale."""
    old, attn = canvas(shallow_policy, 12, seed=1)
    start, width = old.shape[1] - 12, 4
    new = old.clone()
    new[:, start : start + width] = torch.randint(3, 50, (new.shape[0], width), generator=gen(2))
    end = new.shape[1] if layout == "prefix" else start + width
    gaps = {}
    for name, policy in (("one", shallow_policy), ("two", deep_policy)):
        with torch.no_grad():
            _, cache = policy.forward_cache(old, attn)
            if layout == "prefix":
                cache = cache.truncate(start)
            window = policy.forward_window(new[:, start:end], start, cache, attn)
            gaps[name] = (window - policy(new, attn)[:, start:end]).abs().max().item()
    assert gaps["one"] < 1e-4, gaps
    if layout == "dual":  # a prefix window recomputes everything the window can see
        assert gaps["two"] > 1e-2, gaps


def test_window_rejects_a_cache_that_does_not_fit_the_canvas(char_policy):
    x, attn = canvas(char_policy, 8)
    t = x.shape[1]
    with torch.no_grad():
        _, cache = char_policy.forward_cache(x, attn)
        with pytest.raises(ValueError, match="fits neither"):
            char_policy.forward_window(x[:, t - 4 :], t - 4, cache.truncate(t - 6), attn)
        with pytest.raises(ValueError, match="must run to the canvas end"):
            char_policy.forward_window(x[:, t - 8 : t - 4], t - 8, cache.truncate(t - 8), attn)


# ------------------------------------------------------------------------------------------------
# fast == block where it must be

BLOCK_CONFIGS = [
    dict(max_completion_length=12, block_length=12, steps=12),
    dict(max_completion_length=12, block_length=6, steps=8),  # 6 masks in 4 steps: [2, 2, 1, 1]
    dict(max_completion_length=16, block_length=8, steps=6),  # 8 masks in 3 steps: [3, 3, 2]
    dict(max_completion_length=16, block_length=4, steps=8, temperature=1.0),
    dict(max_completion_length=12, block_length=4, steps=9, temperature=0.7, remasking="random"),
    dict(max_completion_length=8, block_length=4, steps=4, cfg_scale=1.5),
    dict(max_completion_length=8, block_length=4, steps=6, cfg_scale=0.5, temperature=1.0),
]


def assert_same_trajectory(a, b):
    assert a.completion_ids.tolist() == b.completion_ids.tolist()
    assert torch.equal(a.unmask_step, b.unmask_step)
    assert torch.allclose(a.token_logprobs, b.token_logprobs, atol=1e-5)
    assert a.nfe == b.nfe and a.num_steps == b.num_steps


@pytest.mark.parametrize("config", BLOCK_CONFIGS)
def test_fast_without_cache_or_threshold_reproduces_block(deep_policy, config):
    ids, mask = padded_prompts(deep_policy)
    expected = block(**config).sample(deep_policy, ids, mask, generator=gen(7))
    got = fast(cache="none", threshold=None, **config).sample(deep_policy, ids, mask, generator=gen(7))
    assert_same_trajectory(got, expected)
    assert got.full_passes == pytest.approx(got.nfe)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("config", BLOCK_CONFIGS)
def test_fast_with_a_cache_reproduces_block_on_a_one_layer_model(shallow_policy, cache, config):
    """The one-layer cache is exact (see above), so every cached step must give block's choice."""
    ids, mask = padded_prompts(shallow_policy)
    expected = block(**config).sample(shallow_policy, ids, mask, generator=gen(7))
    got = fast(cache=cache, threshold=None, **config).sample(shallow_policy, ids, mask, generator=gen(7))
    assert_same_trajectory(got, expected)


def test_a_cache_on_a_deeper_model_is_stale_and_changes_the_log_probs(deep_policy):
    config = dict(max_completion_length=16, block_length=8, steps=16)
    ids, mask = padded_prompts(deep_policy)
    exact = block(**config).sample(deep_policy, ids, mask)
    cached = fast(cache="dual", threshold=None, **config).sample(deep_policy, ids, mask)
    first = exact.unmask_step == 0  # the first step sees the same canvas through a full pass
    assert torch.equal(first, cached.unmask_step == 0)
    assert torch.allclose(cached.token_logprobs[first], exact.token_logprobs[first], atol=1e-5)
    assert not torch.allclose(cached.token_logprobs, exact.token_logprobs, atol=1e-3)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_threshold_zero_fills_each_block_in_its_first_step_like_block_with_one_step_per_block(deep_policy, cache):
    ids, mask = padded_prompts(deep_policy)
    expected = block(max_completion_length=12, block_length=4, steps=3).sample(deep_policy, ids, mask)
    sampler = fast(max_completion_length=12, block_length=4, steps=5, cache=cache, threshold=0.0)  # steps unused
    got = sampler.sample(deep_policy, ids, mask)
    assert_same_trajectory(got, expected)


def test_prefix_and_dual_agree_when_the_completion_is_one_block(deep_policy):
    """In the last block both layouts recompute the same window against the same prefix."""
    ids, mask = padded_prompts(deep_policy)
    kw = dict(max_completion_length=12, block_length=12, threshold=0.9)
    a = fast(cache="prefix", **kw).sample(deep_policy, ids, mask)
    b = fast(cache="dual", **kw).sample(deep_policy, ids, mask)
    assert_same_trajectory(a, b)


# ------------------------------------------------------------------------------------------------
# threshold decoding


def test_confident_per_row_takes_the_top_token_and_every_confident_one():
    conf = torch.tensor([
        [0.2, 0.95, -torch.inf, 0.91, 0.5],  # two confident ones
        [0.3, 0.4, 0.1, -torch.inf, 0.2],  # none confident: the top one only
        [-torch.inf] * 5,  # nothing left to reveal
        [0.9, 0.9, 0.89, 0.1, 0.0],  # at the threshold counts
    ], dtype=torch.float64)
    got = confident_per_row(conf, 0.9)
    assert got.int().tolist() == [[0, 1, 0, 1, 0], [0, 1, 0, 0, 0], [0] * 5, [1, 1, 0, 0, 0]]


def fast_dllm_reference(policy, prompt, gen_length, block_length, threshold):
    """Fast-dLLM's threshold loop without a cache, greedy, one unpadded prompt, written out
    literally: topk over all block masks, then drop every pick after the first below threshold."""
    mask_id = policy.mask_token_id
    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long)
    x[0, : len(prompt)] = torch.tensor(prompt)
    steps = []
    for nb in range(gen_length // block_length):
        end = len(prompt) + (nb + 1) * block_length
        while bool((x[0, end - block_length : end] == mask_id).any()):
            mask_index = x == mask_id
            mask_index[:, end:] = False
            logits = policy.logits(x)
            x0 = logits.argmax(-1)
            p = F.softmax(logits.double(), -1).gather(-1, x0[..., None]).squeeze(-1)
            confidence = torch.where(mask_index, p, -torch.inf)
            k = int(mask_index.sum())
            _, select = torch.topk(confidence[0], k=k)
            transfer = torch.zeros_like(mask_index[0])
            transfer[select] = True
            for j in range(1, k):
                if confidence[0, select[j]] < threshold:
                    transfer[select[j]] = False
            x[0, transfer] = x0[0, transfer]
            steps.append(int(transfer.sum()))
    return x[0, len(prompt) :], steps


@pytest.mark.parametrize("threshold", [0.9, 0.6])
def test_threshold_decoding_without_cache_matches_fast_dllm(deep_policy, threshold):
    for text in TEXTS:
        prompt = deep_policy.encode_prompt(text)
        with torch.no_grad():
            expected, per_step = fast_dllm_reference(deep_policy, prompt, 16, 8, threshold)
        out = fast(max_completion_length=16, block_length=8, cache="none", threshold=threshold).sample(
            deep_policy, torch.tensor([prompt])
        )
        assert out.completion_ids[0].tolist() == expected.tolist()
        assert torch.bincount(out.unmask_step[0]).tolist() == per_step
        assert out.nfe == len(per_step)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_threshold_decoding_with_a_one_layer_cache_equals_no_cache(shallow_policy, cache):
    ids, mask = padded_prompts(shallow_policy)
    kw = dict(max_completion_length=16, block_length=8, threshold=0.9)
    expected = fast(cache="none", **kw).sample(shallow_policy, ids, mask)
    got = fast(cache=cache, **kw).sample(shallow_policy, ids, mask)
    assert_same_trajectory(got, expected)
    assert max(torch.bincount(row).max() for row in got.unmask_step) > 1  # several tokens at one step


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("threshold", [0.9, None])
def test_fast_output_of_a_prompt_is_the_same_alone_and_in_a_left_padded_batch(deep_policy, cache, threshold):
    sampler = fast(max_completion_length=16, block_length=8, steps=16, cache=cache, threshold=threshold)
    ids, mask = padded_prompts(deep_policy)
    batched = sampler.sample(deep_policy, ids, mask)
    several_at_once = False
    for row, text in enumerate(TEXTS):
        alone = sampler.sample(deep_policy, torch.tensor([deep_policy.encode_prompt(text)]))
        assert alone.completion_ids[0].tolist() == batched.completion_ids[row].tolist()
        assert torch.equal(alone.unmask_step[0], batched.unmask_step[row])
        assert torch.allclose(alone.token_logprobs[0], batched.token_logprobs[row], atol=1e-5)
        several_at_once |= bool(torch.bincount(alone.unmask_step[0]).max() > 1)
    assert several_at_once == (threshold is not None)


def test_fast_counts_window_passes_as_one_nfe_and_reports_full_canvas_equivalents(deep_policy):
    ids, mask = padded_prompts(deep_policy)  # canvas width T = P + 16
    t = ids.shape[1] + 16
    kw = dict(max_completion_length=16, block_length=8, steps=16, threshold=None)
    dual = fast(cache="dual", **kw).sample(deep_policy, ids, mask)
    prefix = fast(cache="prefix", **kw).sample(deep_policy, ids, mask)
    assert dual.nfe == prefix.nfe == 16
    assert dual.full_passes == pytest.approx(2 + 14 * 8 / t)  # one full pass per block, then the block
    assert prefix.full_passes == pytest.approx(2 + 7 * 16 / t + 7 * 8 / t)  # then block + suffix


# ------------------------------------------------------------------------------------------------
# configuration and errors


class NoCache(torch.nn.Module):
    """A policy wrapper that hides the cache methods (like a model without them)."""

    supports_kv_cache = False

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    @property
    def mask_token_id(self):
        return self.policy.mask_token_id

    def logits(self, ids, attention_mask=None):
        return self.policy.logits(ids, attention_mask)


def test_fast_with_a_cache_on_a_policy_without_one_says_to_turn_the_cache_off(char_policy):
    prompts = torch.tensor([char_policy.encode_prompt("ab")])
    with pytest.raises(ValueError, match=r"NoCache has none.*cache: none"):
        fast(max_completion_length=8, block_length=8).sample(NoCache(char_policy), prompts)
    out = fast(max_completion_length=8, block_length=8, cache="none").sample(NoCache(char_policy), prompts)
    assert not bool((out.completion_ids == char_policy.mask_token_id).any())


def test_fast_is_registered_and_validates_its_options():
    cls = Registry().get("samplers", "fast")
    assert cls is FastSampler
    defaults = FastSamplerConfig()
    assert defaults.cache == "dual" and defaults.threshold == 0.9
    with pytest.raises(ValueError, match="threshold"):
        FastSamplerConfig(threshold=1.5)
    with pytest.raises(ValueError, match="cache"):
        FastSamplerConfig(cache="suffix")
    with pytest.raises(ValueError, match="multiple of block_length"):
        FastSamplerConfig(max_completion_length=30, block_length=8)
    assert "exact_path" in fast(steps=32, remasking="random", cache="none", threshold=None).records
    assert "exact_path" not in fast(steps=32, remasking="random").records
