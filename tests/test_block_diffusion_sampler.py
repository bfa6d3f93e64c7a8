"""The `block_diffusion` sampler: block-by-block threshold decoding of a block-diffusion tiny model with
the exact cache of committed blocks, EOS early stop and LLaDA2.1 token editing."""

from __future__ import annotations

import math

import pytest
import torch

from ddrl.batch import left_pad
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.registry import Registry
from ddrl.samplers.block_diffusion import (
    BlockDiffusionSampler,
    BlockDiffusionSamplerConfig,
)
from ddrl.testing import generator as gen
from tests.conftest import PEAKED

# real prompt lengths 2, 5, 1, 4 with block size 3: the first completion block is partial (1, 1, 2, 2
# completion tokens) and differs per row
PROMPTS = [[0, 1], [2, 3, 1, 0, 4], [1], [4, 4, 2, 6]]
L = 8


@pytest.fixture(scope="module")
def policy() -> TinyPolicy:
    return TinyPolicy.fresh(TinyArchitecture(vocab_size=8, block_size=3, **PEAKED), None, seed=11).eval()


def registry() -> Registry:
    reg = Registry()
    if "block_diffusion" not in reg.names("samplers"):  # an install made before the entry point existed
        reg.register("samplers", "block_diffusion", BlockDiffusionSampler)
    return reg


def sampler(**kw) -> BlockDiffusionSampler:
    kw = {"max_completion_length": L, "threshold": 0.6, "eos_early_stop": False, **kw}
    return BlockDiffusionSampler(BlockDiffusionSamplerConfig(**kw))


def run(policy, prompts=PROMPTS, seed=0, **kw):
    ids, mask = left_pad(prompts, 0)
    return sampler(**kw).sample(policy, ids, mask, generator=gen(seed))


def same(a, b) -> None:
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.unmask_step, b.unmask_step)
    assert torch.allclose(a.token_logprobs, b.token_logprobs, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("editing", [None, 0.3])
def test_the_cached_run_equals_the_uncached_one(policy, temperature, editing):
    cached = run(policy, temperature=temperature, editing_threshold=editing, cache="exact")
    full = run(policy, temperature=temperature, editing_threshold=editing, cache="none")
    same(cached, full)
    assert cached.nfe == full.nfe and cached.num_steps == full.num_steps
    assert not bool((cached.completion_ids == policy.mask_token_id).any())
    assert bool((cached.unmask_step >= 0).all()) and bool((cached.token_logprobs < 0).all())


def test_auto_uses_the_cache_and_block_cache_paths_match_forward(policy):
    ids, mask = left_pad(PROMPTS, 0)
    x = torch.cat([ids, torch.randint(0, 7, (4, L), generator=gen(1))], 1)
    attn = torch.cat([mask, torch.ones(4, L, dtype=torch.bool)], 1)
    with torch.no_grad():
        full = policy(x, attn)
        logits, cache = policy.forward_block_cache(x, attn)
        assert torch.equal(logits, full)
        window, attended = policy.forward_block_window(x[:, 6:], 6, cache.truncate(6), attn)
    assert torch.allclose(window, full[:, 6:], atol=1e-5)
    assert attended.length == x.shape[1]
    assert policy.supports_block_cache and not policy.supports_kv_cache
    assert sampler()._use_cache(policy)


def test_a_row_decodes_the_same_alone_and_in_a_left_padded_batch(policy):
    for kw in ({}, {"editing_threshold": 0.3}, {"threshold": 1.0}):
        batch = run(policy, **kw)
        for row, prompt in enumerate(PROMPTS):
            alone = run(policy, [prompt], **kw)
            assert torch.equal(alone.completion_ids[0], batch.completion_ids[row])
            assert torch.equal(alone.unmask_step[0], batch.unmask_step[row])
            assert torch.allclose(alone.token_logprobs[0], batch.token_logprobs[row], atol=1e-5)


def rounds(prompt_len: int, bs: int = 3) -> torch.Tensor:
    """The block round of each completion position (the first block is partial when unaligned)."""
    return (prompt_len + torch.arange(L)) // bs - prompt_len // bs


def test_threshold_one_reveals_one_token_per_step_block_by_block(policy):
    out = run(policy, threshold=1.0)
    for row, prompt in enumerate(PROMPTS):
        steps = out.unmask_step[row]
        assert sorted(steps.tolist()) == list(range(L))  # one token per step
        r = rounds(len(prompt))
        for k in range(int(r.max())):  # every block finished before the next starts
            assert steps[r == k].max() < steps[r == k + 1].min()
    assert run(policy, [PROMPTS[0]], threshold=1.0).num_steps == L  # a batch idles where blocks differ


def test_min_tokens_of_a_block_decodes_each_block_in_one_step(policy):
    out = run(policy, threshold=1.0, min_tokens_per_step=3)
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(out.unmask_step[row], rounds(len(prompt)))
    # the first (partial) block of the row with prompt length 2 holds one completion token
    assert out.unmask_step[0].tolist()[:2] == [0, 1]


def test_threshold_zero_decodes_every_block_in_one_step(policy):
    out = run(policy, threshold=0.0)
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(out.unmask_step[row], rounds(len(prompt)))


def test_eos_early_stop_fills_the_rest_with_eos(policy):
    plain = run(policy, threshold=1.0)
    eos = 6  # a token the model places often
    stopped = run(policy, threshold=1.0, eos_early_stop=True, eos_token_id=eos)
    hit = 0
    for row in range(len(PROMPTS)):
        tokens = plain.completion_ids[row].tolist()
        # the first committed EOS with nothing masked before it, in reveal order
        order = plain.unmask_step[row].argsort().tolist()
        stop = None
        for n, pos in enumerate(order):
            if tokens[pos] == eos and set(range(pos)) <= set(order[: n + 1]):
                stop = pos
                break
        got = stopped.completion_ids[row].tolist()
        if stop is None:
            assert got == tokens
            continue
        hit += 1
        assert got[: stop + 1] == tokens[: stop + 1]
        assert got[stop:] == [eos] * (L - stop)
        filled = torch.arange(L) > stop
        assert bool((stopped.token_logprobs[row][filled] == 0).all())
        assert stopped.unmask_step[row].max() <= plain.unmask_step[row][stop]
    assert hit >= 1
    assert stopped.nfe < plain.nfe
    # and the cached run agrees with the uncached one under early stopping too
    same(stopped, run(policy, threshold=1.0, eos_early_stop=True, eos_token_id=eos, cache="none"))


def test_token_editing_changes_tokens_only_when_enabled(policy):
    off = run(policy)
    high = run(policy, editing_threshold=1.0)  # nothing is that confident: the same run
    same(off, high)
    on = run(policy, editing_threshold=0.3)
    assert not torch.equal(on.completion_ids, off.completion_ids)
    assert on.num_steps > off.num_steps
    # an edited position records the step and log-prob of its last placement
    assert bool((on.token_logprobs < 0).all()) and bool((on.unmask_step >= 0).all())


def test_scorers_are_scored_on_the_same_canvases(policy):
    ids, mask = left_pad(PROMPTS, 0)
    out = sampler().sample(policy, ids, mask, generator=gen(0), scorers=[policy])
    assert torch.allclose(out.scorer_logprobs[0], out.token_logprobs, atol=1e-5)


def test_bidirectional_models_and_mismatched_blocks_are_refused_or_uncached(token_policy, policy):
    with pytest.raises(ValueError, match="block_length"):
        sampler().sample(token_policy, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="supports_block_cache"):
        sampler(block_length=2, cache="exact").sample(token_policy, torch.tensor([[0, 1]]))
    out = sampler(block_length=2).sample(token_policy, torch.tensor([[0, 1]]))  # auto: no cache
    assert not bool((out.completion_ids == token_policy.mask_token_id).any())
    with pytest.raises(ValueError, match="differs from the model's block_size"):
        sampler(block_length=2).sample(policy, torch.tensor([[0, 1]]))


def test_the_registry_builds_it_and_it_passes_the_conformance_kit():
    from ddrl.testing.conformance import check_sampler

    reg = registry()
    assert isinstance(reg.build("samplers", BlockDiffusionSamplerConfig(max_completion_length=4)), BlockDiffusionSampler)
    check_sampler("block_diffusion", options={"max_completion_length": 4, "block_length": 2}, registry=reg)
    check_sampler("block_diffusion", options={"max_completion_length": 4, "block_length": 2, "temperature": 1.0,
                                              "editing_threshold": 0.5}, registry=reg)


def test_dmpo_trains_a_block_model_with_it(tmp_path):
    from ddrl.config import build_config
    from ddrl.estimators.block_elbo import BlockElboEstimator
    from ddrl.training.trainer import Trainer
    from tests.test_trainer import PATTERN, recipe

    reg = registry()
    if "block_elbo" not in reg.names("estimators"):
        reg.register("estimators", "block_elbo", BlockElboEstimator)
    arch = {**PATTERN["model"]["architecture"], "block_size": 2}
    raw = recipe(tmp_path, PATTERN, model={**PATTERN["model"], "architecture": arch},
                 sampler={"name": "block_diffusion", "max_completion_length": 4, "temperature": 1.0,
                          "threshold": 0.9},
                 estimator={"name": "block_elbo", "num_samples": 2, "block_size": 2},
                 objective={"name": "dmpo"}, train={"max_steps": 2, "save_steps": 2})
    trainer = Trainer(build_config(raw, registry=reg), reg)
    assert isinstance(trainer.sampler, BlockDiffusionSampler) if hasattr(trainer, "sampler") else True
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    result = trainer.train()
    assert [m["step"] for m in result.metrics if "loss" in m] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in result.metrics if "loss" in m)
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
