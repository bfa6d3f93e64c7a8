"""The exact cache of committed blocks of native `llada2` (block-causal attention, GQA, partial rotary,
MoE): ``forward_block_cache`` / ``forward_block_window`` equal a plain forward, and the `block_diffusion`
sampler with ``cache: exact`` equals ``cache: none`` on a left-padded batch with partial first blocks."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ddrl.batch import left_pad
from ddrl.models.llada2 import LLaDA2Policy
from ddrl.registry import Registry
from ddrl.samplers.block_diffusion import (
    BlockDiffusionSampler,
    BlockDiffusionSamplerConfig,
)
from ddrl.testing import generator as gen
from tests.hf_fixtures_llada2 import write_llada2

BS = 4
# real prompt lengths 2, 5, 7, 4 with blocks of 4: the first completion block holds 2, 3, 1, 4 completion
# tokens (the last row is aligned), so every row has its own block boundaries
PROMPTS = [[11, 42], [7, 99, 3, 250, 18], [60, 61, 62, 5, 140, 33, 8], [200, 1, 77, 123]]
L = 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llada2_cache") / "ckpt"
    write_llada2(path, block_size=BS)
    return path


def load(path, **options) -> LLaDA2Policy:
    cls = Registry().get("models", "llada2")
    return cls.from_config(cls.Config(path=str(path), **{"dtype": "float32", **options})).eval()


@pytest.fixture(scope="module")
def policy(checkpoint) -> LLaDA2Policy:
    return load(checkpoint)


def canvas(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = left_pad(PROMPTS, 0)
    x = torch.cat([ids, torch.randint(0, 295, (len(PROMPTS), L), generator=gen(seed))], 1)
    attn = torch.cat([mask, torch.ones(len(PROMPTS), L, dtype=torch.bool)], 1)
    return x, attn


def run(policy, prompts=PROMPTS, seed=0, **kw):
    ids, mask = left_pad(prompts, 0)
    kw = {"max_completion_length": L, "threshold": 0.5, "eos_early_stop": False, **kw}
    return BlockDiffusionSampler(BlockDiffusionSamplerConfig(**kw)).sample(policy, ids, mask, generator=gen(seed))


def same(a, b) -> None:
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.unmask_step, b.unmask_step)
    torch.testing.assert_close(a.token_logprobs, b.token_logprobs, atol=1e-5, rtol=0)
    assert a.nfe == b.nfe and a.num_steps == b.num_steps


def test_the_checkpoint_is_a_block_model_with_the_block_cache(policy):
    assert policy.block_size == BS
    assert policy.supports_block_cache and not policy.supports_kv_cache
    cfg = policy.model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads and cfg.rope_dim < cfg.head_dim  # GQA, partial rotary
    assert BlockDiffusionSampler(BlockDiffusionSamplerConfig())._use_cache(policy)  # auto -> exact
    x, attn = canvas()
    with pytest.raises(NotImplementedError):
        policy.forward_cache(x, attn)


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_block_cache_paths_match_a_plain_forward(checkpoint, attn_impl):
    policy = load(checkpoint, attn_implementation=attn_impl)
    x, attn = canvas()
    t = x.shape[1]
    real = attn.bool()
    with torch.no_grad():
        full = policy(x, attn)
        logits, cache = policy.forward_block_cache(x, attn)
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
        cfg = policy.model.config
        assert cache.length == t and len(cache.keys) == cfg.num_hidden_layers
        assert cache.keys[0].shape == (x.shape[0], cfg.num_key_value_heads, t, cfg.head_dim)
        for start in (3, 7, 9, 12):  # inside the padding, inside and at the edge of blocks
            window, attended = policy.forward_block_window(x[:, start:], start, cache.truncate(start), attn)
            assert window.shape[1] == t - start and attended.length == t
            torch.testing.assert_close(window[real[:, start:]], full[:, start:][real[:, start:]], atol=1e-5, rtol=0)
            for k_full, k_att in zip(cache.keys, attended.keys):
                torch.testing.assert_close(k_att[:, :, start:], k_full[:, :, start:], atol=1e-5, rtol=0)
        # a window that ends before the canvas does: the canvas of its attention_mask; then chained
        end = 11
        part, _ = policy.forward_block_cache(x[:, :end], attn[:, :end])
        torch.testing.assert_close(part, policy(x[:, :end], attn[:, :end]), atol=1e-5, rtol=0)
        first, attended = policy.forward_block_window(x[:, 5:end], 5, cache.truncate(5), attn[:, :end])
        torch.testing.assert_close(first, part[:, 5:], atol=1e-5, rtol=0)
        second, _ = policy.forward_block_window(x[:, 8:], 8, attended.truncate(8), attn)
        torch.testing.assert_close(second, full[:, 8:], atol=1e-5, rtol=0)


def test_block_window_checks_the_cache_layout(policy):
    x, attn = canvas()
    with torch.no_grad():
        _, cache = policy.forward_block_cache(x, attn)
        with pytest.raises(ValueError, match="prefix cache"):
            policy.forward_block_window(x[:, 6:], 6, cache, attn)
        with pytest.raises(ValueError, match="attention_mask"):
            policy.forward_block_window(x[:, 6:10], 6, cache.truncate(6), attn)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("editing", [None, 0.3])
def test_the_cached_run_equals_the_uncached_one(policy, temperature, editing):
    cached = run(policy, temperature=temperature, editing_threshold=editing, cache="exact")
    full = run(policy, temperature=temperature, editing_threshold=editing, cache="none")
    same(cached, full)
    assert not bool((cached.completion_ids == policy.mask_token_id).any())
    assert bool((cached.unmask_step >= 0).all()) and bool((cached.token_logprobs < 0).all())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_cached_run_equals_the_uncached_one_with_eos_early_stop(policy, temperature):
    plain = run(policy, temperature=temperature, threshold=1.0)
    # the EOS: a token the model places, so that some row stops early
    eos = int(plain.completion_ids[:, 2:].flatten().mode().values)
    kw = {"temperature": temperature, "threshold": 1.0, "eos_early_stop": True, "eos_token_id": eos}
    cached = run(policy, cache="exact", **kw)
    same(cached, run(policy, cache="none", **kw))
    stopped = (cached.token_logprobs == 0).any(1)  # rows filled with EOS after their first committed one
    assert bool(stopped.any())
    assert not torch.equal(cached.completion_ids, plain.completion_ids)
