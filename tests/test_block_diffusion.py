"""Block diffusion on the `tiny` model (``architecture.block_size``), with exact answers.

The model attends bidirectionally inside a block and causally across blocks (blocks of ``block_size``
real tokens from the first prompt token); its generative distribution is block-by-block decoding in a
uniformly random order inside each block, computed exactly by enumeration, and the `block_elbo`
estimator bounds it block by block.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddrl.batch import SequenceBatch, left_pad
from ddrl.enumeration import block_sequence_log_probs, sequence_log_probs
from ddrl.estimators.block_elbo import (
    BlockElboConfig,
    BlockElboEstimator,
    block_elbo_enumerated,
    completion_blocks,
    log_likelihood_block_orders,
)
from ddrl.estimators.elbo import elbo_enumerated
from ddrl.estimators.exact import ExactConfig, ExactEstimator
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.testing import generator as gen
from tests.conftest import PEAKED, all_completions, batch_for

PROMPT = [0, 2]  # two real tokens: one whole block of 2, so the completion blocks are [0, 1], [2, 3]
ODD_PROMPT = [0, 2, 1]  # the last prompt token shares a block with the first completion token


def block_policy(vocab_size: int = 4, block_size: int = 2, seed: int = 11) -> TinyPolicy:
    return TinyPolicy.fresh(TinyArchitecture(vocab_size=vocab_size, block_size=block_size, **PEAKED), None,
                            seed=seed).eval()


@pytest.fixture(scope="module")
def policy() -> TinyPolicy:
    return block_policy()


def logits_of(policy: TinyPolicy, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return policy.logits(torch.tensor([ids]))[0]


# ------------------------------------------------------------------------------------------------
# the attention mask


def test_attention_is_bidirectional_inside_a_block_and_causal_across_blocks(policy):
    ids = [0, 2, 3, 1, 3, 3]  # blocks: [0, 2] [3, 1] [3, 3]
    base = logits_of(policy, ids)
    later = logits_of(policy, ids[:4] + [2, 0])  # change the last block
    assert torch.equal(base[:4], later[:4])  # the prompt and earlier blocks never see it
    assert not torch.allclose(base[4:], later[4:])
    same = logits_of(policy, ids[:3] + [0] + ids[4:])  # change position 3, inside block [2, 3]
    assert not torch.allclose(base[2], same[2])  # bidirectional inside the block
    assert torch.equal(base[:2], same[:2])
    assert not torch.allclose(base[5], same[5])  # a later block sees it


def test_default_architecture_has_no_block_size_and_keeps_its_config_file(token_policy, tmp_path):
    assert TinyArchitecture().block_size is None and token_policy.block_size is None
    assert token_policy.supports_kv_cache
    token_policy.save_pretrained(tmp_path)
    assert "block_size" not in (tmp_path / "config.json").read_text()


def test_block_model_round_trips_and_left_padding_keeps_the_blocks(policy, tmp_path):
    policy.save_pretrained(tmp_path)
    loaded = TinyPolicy.from_pretrained(tmp_path)
    assert loaded.block_size == 2
    rows = [[0, 2, 3, 1], [1, 3, 3, 0, 2, 3]]
    ids, mask = left_pad(rows, 0)
    with torch.no_grad():
        batched = loaded.logits(ids, mask)
    for row, real in enumerate(rows):
        assert torch.allclose(batched[row, mask[row]], logits_of(policy, real), atol=1e-5)


def test_block_models_refuse_the_cache_paths_clearly(policy):
    assert not policy.supports_kv_cache
    ids = torch.tensor([[0, 2, 3, 3]])
    with pytest.raises(NotImplementedError, match="block_size=2.*cache: none"):
        policy.forward_cache(ids)
    from ddrl.samplers.fast import FastSampler, FastSamplerConfig

    sampler = FastSampler(FastSamplerConfig(max_completion_length=4, block_length=2, cache="prefix"))
    with pytest.raises(ValueError, match="supports_kv_cache is False"):
        sampler.sample(policy, torch.tensor([PROMPT]))


# ------------------------------------------------------------------------------------------------
# the exact generative distribution


@pytest.mark.parametrize(("vocab_size", "prompt"), [(4, PROMPT), (5, PROMPT), (4, ODD_PROMPT)])
def test_block_decoding_probabilities_sum_to_one(vocab_size, prompt):
    policy = block_policy(vocab_size)
    logp = block_sequence_log_probs(policy, prompt, all_completions(vocab_size - 1, 4), block_size=2)
    assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=1e-5)
    assert logp.max() - logp.min() > 1.0  # not uniform: the model reads its input


@pytest.mark.parametrize("prompt", [PROMPT, ODD_PROMPT])
def test_block_likelihood_is_the_mean_over_block_respecting_orders(policy, prompt):
    """log p(o) = log mean over orders that finish each block before the next of p(o; sigma), each
    path likelihood scored by the `exact` estimator (later positions masked)."""
    batch = batch_for(prompt, all_completions(3, 4)[::5])
    blocks = completion_blocks(batch, 2)[0].tolist()
    parts = [[i for i, c in enumerate(blocks) if c == j] for j in range(max(blocks) + 1)]
    orders = [sum(map(list, p), []) for p in itertools.product(*[itertools.permutations(part) for part in parts])]
    est = ExactEstimator(ExactConfig())
    with torch.no_grad():
        paths = torch.stack([est.log_likelihood(policy, batch, order=torch.tensor(o).expand(batch.batch_size, -1))
                             for o in orders])
        got = log_likelihood_block_orders(policy, batch, 2)
    assert torch.allclose(got, torch.logsumexp(paths, 0) - math.log(len(orders)), atol=1e-5)
    assert (paths.max(0).values - paths.min(0).values).max() > 0.1  # the orders really differ


def test_the_ancestral_sampler_draws_from_the_exact_block_distribution(policy):
    n = 6000
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=4, block_length=2))
    out = sampler.sample(policy, torch.tensor([PROMPT]).expand(n, -1).clone(), generator=gen(5))
    completions = out.batch.completion_ids
    # its recorded path log-probs are the exact path likelihoods of its own orders
    order = out.unmask_step.argsort(-1)[:50]
    with torch.no_grad():
        path = ExactEstimator(ExactConfig()).log_likelihood(policy, out.batch.index(slice(0, 50)), order=order)
    assert torch.allclose(out.token_logprobs[:50].sum(-1), path, atol=1e-5)
    # and the outcome frequencies match p
    space = all_completions(3, 4)
    p = block_sequence_log_probs(policy, PROMPT, space, block_size=2).exp()
    codes = (completions * torch.tensor([27, 9, 3, 1])).sum(-1)
    freq = torch.bincount(codes, minlength=81).double() / n
    tv = 0.5 * (freq - p).abs().sum().item()
    assert tv < 0.008
    # and the test tells distributions apart: the any-order law of the same network (which lets a
    # position be decoded before an earlier block is complete) is farther from the samples
    q = sequence_log_probs(policy, PROMPT, space).exp()
    assert 0.5 * (freq - q).abs().sum().item() > 2 * tv


# ------------------------------------------------------------------------------------------------
# the block ELBO


def block_elbo_by_definition(policy: TinyPolicy, prompt: list[int], completion: list[int]) -> float:
    """sum_b E_{m~U{1..n_b}} (n_b/m) E_{|M|=m} sum_{d in M} log pi(x)_d with the blocks before b clean
    and those after b masked, written out with itertools."""
    batch = batch_for(prompt, torch.tensor([completion]))
    blocks = completion_blocks(batch, 2)[0].tolist()
    mask = policy.mask_token_id
    total = 0.0
    for b in range(max(blocks) + 1):
        part = [i for i, c in enumerate(blocks) if c == b]
        nb = len(part)
        for m in range(1, nb + 1):
            for subset in itertools.combinations(part, m):
                canvas = [mask if (i in subset or blocks[i] > b) else t for i, t in enumerate(completion)]
                lp = torch.log_softmax(logits_of(policy, prompt + canvas)[len(prompt):], -1)
                ce = sum(lp[d, completion[d]].item() for d in subset)
                total += (1 / nb) * (1 / math.comb(nb, m)) * (nb / m) * ce
    return total


@pytest.mark.parametrize("prompt", [PROMPT, ODD_PROMPT])
def test_enumerated_block_elbo_is_the_sum_of_the_per_block_elbos(policy, prompt):
    completions = [[1, 2, 2, 0], [0, 0, 1, 2]]
    with torch.no_grad():
        got = block_elbo_enumerated(policy, batch_for(prompt, torch.tensor(completions)), 2)
    for row, completion in enumerate(completions):
        assert got[row].item() == pytest.approx(block_elbo_by_definition(policy, prompt, completion), abs=1e-5)


def test_block_elbo_is_below_the_exact_log_likelihood_for_every_completion(policy):
    batch = batch_for(PROMPT, all_completions(3, 4))
    with torch.no_grad():
        logp = log_likelihood_block_orders(policy, batch, 2)
        elbo = block_elbo_enumerated(policy, batch, 2)
    assert bool((elbo <= logp + 1e-5).all())
    assert (logp - elbo).mean() > 1e-3  # a strict bound here


def test_one_block_is_the_plain_elbo():
    policy = block_policy(block_size=4)
    batch = batch_for([0, 2, 1, 1], all_completions(3, 4)[::7])  # prompt = one block, completion = one block
    with torch.no_grad():
        assert torch.allclose(block_elbo_enumerated(policy, batch, 4), elbo_enumerated(policy, batch), atol=1e-5)


@pytest.mark.parametrize("prompt", [PROMPT, ODD_PROMPT])
def test_monte_carlo_block_elbo_mean_matches_the_enumerated_one(policy, prompt):
    completions = torch.tensor([[0, 1, 2, 2], [2, 2, 2, 0], [1, 0, 0, 1]])
    draws = 400
    est = BlockElboEstimator(BlockElboConfig(num_samples=2, block_size=2))
    with torch.no_grad():
        exact = block_elbo_enumerated(policy, batch_for(prompt, completions), 2)
        samples = est.log_likelihood(policy, batch_for(prompt, completions.repeat(draws, 1)), gen(0)).view(draws, 3)
    mean, std = samples.mean(0), samples.std(0)
    assert bool((std > 1e-3).all())
    assert torch.all((mean - exact).abs() <= 4 * std / math.sqrt(draws)), (mean, exact, std)


def test_block_views_keep_earlier_blocks_clean_and_mask_later_ones(policy):
    batch = batch_for(PROMPT, all_completions(3, 4)[:64])
    views = BlockElboEstimator(BlockElboConfig(num_samples=4, block_size=2)).draw(batch, gen(1))
    blocks = completion_blocks(batch, 2)[:, None, :]  # (B, 1, L)
    chosen = torch.where(views.scored, blocks, -1).amax(-1, keepdim=True)  # (B, K, 1)
    assert bool((chosen >= 0).all())  # every view scores something
    assert bool((views.scored <= (blocks == chosen)).all())  # inside one block
    assert bool((views.completion_masked == (views.scored | (blocks > chosen))).all())
    # stratified: with K a multiple of the 2 blocks, each block gets K/2 views of every row
    assert bool(((chosen == 0).sum(1) == 2).all())
    # a mismatched block size is refused when scoring
    with pytest.raises(ValueError, match="block_size is 4.*2 tokens"):
        BlockElboEstimator(BlockElboConfig(block_size=4)).score(policy, batch, views)


def test_invalid_positions_are_never_scored(policy):
    valid = torch.tensor([[True, True, True, False]] * 200)
    batch = SequenceBatch.from_parts(torch.tensor([PROMPT] * 200), torch.tensor([[0, 1, 2, 2]] * 200),
                                     completion_mask=valid)
    views = BlockElboEstimator(BlockElboConfig(num_samples=2, block_size=2)).draw(batch, gen(2))
    assert not bool(views.scored[..., 3].any())
    # block 1 has one valid position: when chosen, it is masked and weighted (nb/K) * n_b/m = 1 * 1
    block1 = views.scored[..., 2]
    assert bool(block1.any()) and torch.allclose(views.weights[..., 2][block1], torch.tensor(1.0))


# ------------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("objective", ["dmpo", "diffu_grpo", "coupled_grpo"])
def test_objectives_train_a_block_model_with_the_block_elbo(tmp_path, objective):
    from ddrl.config import build_config
    from ddrl.registry import Registry
    from ddrl.training.trainer import Trainer
    from tests.test_trainer import PATTERN, recipe

    registry = Registry()
    if "block_elbo" not in registry.names("estimators"):  # an install made before the entry point existed
        registry.register("estimators", "block_elbo", BlockElboEstimator)
    arch = {**PATTERN["model"]["architecture"], "block_size": 2}
    raw = recipe(tmp_path, PATTERN, model={**PATTERN["model"], "architecture": arch},
                 sampler={**PATTERN["sampler"], "block_length": 2},
                 estimator={"name": "block_elbo", "num_samples": 2, "block_size": 2},
                 objective={"name": objective}, train={"max_steps": 2, "save_steps": 2})
    trainer = Trainer(build_config(raw, registry=registry), registry)
    assert trainer.policy.block_size == 2
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    result = trainer.train()
    assert [m["step"] for m in result.metrics if "loss" in m] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in result.metrics if "loss" in m)
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())


def test_the_block_estimator_and_a_block_tiny_pass_the_conformance_kit():
    from ddrl.registry import Registry
    from ddrl.testing.conformance import check_estimator, check_model

    registry = Registry()
    if "block_elbo" not in registry.names("estimators"):
        registry.register("estimators", "block_elbo", BlockElboEstimator)
    check_estimator("block_elbo", options={"num_samples": 3, "block_size": 2}, registry=registry)
    check_model("tiny", distribution="ddrl", options={"charset": "ab", "architecture": {
        "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32, "block_size": 2}})
