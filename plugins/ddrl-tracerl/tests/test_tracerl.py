"""TraceRL against exact answers: its training canvases are the block sampler's own (s = 1), its
per-step log-probs equal a hand loop and the sampler's records, and the PPO loss by hand."""

from __future__ import annotations

import pytest
import torch

from ddrl.batch import SequenceBatch
from ddrl.config import ConfigError
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.objectives.groups import group_advantages
from ddrl.samplers.base import SampleOutput
from ddrl.testing import CanvasRecorder, build, generator, trainable
from ddrl_tracerl import TraceRL, TraceRLConfig, TraceRLState

A, B, EOS, MASK = 5, 6, 3, 1
PROMPTS = [[2, A, B], [2, B], [2, A, A, B]]  # BOS-led, of different lengths: left padding


def sampled_rollout(registry, policy, steps: int, length: int = 8, block: int = 4, seed: int = 0):
    """Two completions of each prompt from the block sampler (temperature 1), with its canvases."""
    width = max(map(len, PROMPTS))
    prompts = [p for p in PROMPTS for _ in range(2)]
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    sampler = build(registry, "samplers", "block", max_completion_length=length, block_length=block, steps=steps,
                    temperature=1.0)
    recorder = CanvasRecorder(policy)
    out = sampler.sample(recorder, ids, mask, generator=generator(seed))
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 2.0])
    return RolloutBatch(out.batch, rewards, torch.tensor([0, 0, 1, 1, 2, 2]), out), recorder.canvases, sampler


def context(policy, **kwargs) -> ObjectiveContext:
    return ObjectiveContext(policy=policy, estimator=None, **kwargs)  # type: ignore[arg-type]


def test_with_shrinkage_one_the_training_inputs_are_the_samplers_canvases(registry, ab_policy):
    roll, canvases, sampler = sampled_rollout(registry, ab_policy, steps=8)  # 1 token per step
    objective = TraceRL(TraceRLConfig(shrinkage=1, mask_after_eos=False))
    assert objective.needs_sampler <= sampler.records
    recorder = CanvasRecorder(ab_policy)
    with torch.no_grad():
        objective.prepare(roll, context(recorder))
    inputs = torch.cat(recorder.canvases)  # view (b, r) is row b * R + r
    steps = len(canvases)
    assert steps == roll.sample.num_steps == 8
    assert inputs.shape[0] == roll.batch.batch_size * steps
    for k, canvas in enumerate(canvases):
        assert torch.equal(inputs[k::steps], canvas), k


def test_with_shrinkage_one_old_log_probs_are_the_samplers_recorded_log_probs(registry, ab_policy):
    roll, _, _ = sampled_rollout(registry, ab_policy, steps=4, seed=1)  # 2 tokens per step
    with torch.no_grad():
        prepared = TraceRL(TraceRLConfig(shrinkage=1, mask_after_eos=False)).prepare(roll, context(ab_policy))
    assert torch.allclose(prepared.old_logp, roll.sample.token_logprobs, atol=1e-5)


def logprobs_by_hand(policy, roll: RolloutBatch, shrinkage: int) -> torch.Tensor:
    """``[B, L]`` log pi(o_t | canvas of t's merged step), one row and merged step at a time; 0 after
    the first EOS. The canvas keeps the tokens of earlier merged steps and masks the rest."""
    out = torch.zeros(roll.batch.completion_ids.shape)
    for i in range(roll.batch.batch_size):
        prompt = roll.batch.prompt_ids[i][roll.batch.prompt_mask[i]].tolist()  # no padding at all
        completion = roll.batch.completion_ids[i].tolist()
        merged = (roll.sample.unmask_step[i] // shrinkage).tolist()
        upto = completion.index(EOS) + 1 if EOS in completion else len(completion)
        for k in sorted(set(merged)):
            canvas = prompt + [tok if merged[t] < k else MASK for t, tok in enumerate(completion)]
            logp = torch.log_softmax(policy.logits(torch.tensor([canvas]))[0, len(prompt):].float(), -1)
            for t in range(upto):
                if merged[t] == k:
                    out[i, t] = logp[t, completion[t]]
    return out


def test_merged_steps_log_probs_equal_a_hand_loop(registry, ab_policy):
    roll, _, _ = sampled_rollout(registry, ab_policy, steps=8, seed=2)
    assert bool((roll.batch.completion_ids == EOS).any())  # the EOS truncation is exercised
    with torch.no_grad():
        prepared = TraceRL(TraceRLConfig(shrinkage=3)).prepare(roll, context(ab_policy))
        want = logprobs_by_hand(ab_policy, roll, 3)
    assert torch.allclose(prepared.old_logp, want, atol=1e-5)


def test_loss_is_the_clipped_surrogate_plus_k3_by_hand(registry, ab_policy):
    old_policy = build(registry, "models", "tiny", charset="ab", seed=7,
                       architecture={"d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32, "init_std": 0.3}).eval()
    roll, _, _ = sampled_rollout(registry, old_policy, steps=4, seed=3)
    objective = TraceRL(TraceRLConfig(shrinkage=2, epsilon=0.2, beta=0.01))
    with torch.no_grad():
        prepared = objective.weigh(roll, objective.prepare(roll, context(old_policy)), context(old_policy)).state
    out = objective.loss(roll, prepared, context(ab_policy), 1)  # the current policy differs from the old

    with torch.no_grad():
        old = logprobs_by_hand(old_policy, roll, 2)
    new = logprobs_by_hand(ab_policy, roll, 2)
    adv = group_advantages(roll.rewards, roll.group_ids, scale=True).float()[:, None]
    ratio = torch.exp(new - old)
    surrogate = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    kl = torch.exp(old - new) - (old - new) - 1
    completion = roll.batch.completion_ids
    valid = torch.stack([torch.arange(8) <= (row.tolist().index(EOS) if EOS in row else 7) for row in completion])
    by_hand = ((surrogate + 0.01 * kl) * valid).sum() / valid.sum()
    assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
    for x, y in zip(torch.autograd.grad(out.loss, trainable(ab_policy)), torch.autograd.grad(by_hand, trainable(ab_policy))):
        assert torch.allclose(x, y, atol=1e-5)
    assert 0 < out.metrics["clip_ratio"] < 1 and out.metrics["kl"] > 0


def test_at_the_old_policy_the_loss_is_minus_the_token_mean_advantage(registry, ab_policy):
    roll, _, _ = sampled_rollout(registry, ab_policy, steps=8, seed=4)
    objective = TraceRL(TraceRLConfig())  # s = 8: one canvas, the fully masked completion
    with torch.no_grad():
        prepared = objective.weigh(roll, objective.prepare(roll, context(ab_policy)), context(ab_policy)).state
    rows = slice(2, 5)  # a micro-batch: the state follows the rows
    out = objective.loss(roll.index(rows), prepared.index(rows), context(ab_policy), 0)
    n = torch.tensor([row.tolist().index(EOS) + 1 if EOS in row else 8 for row in roll.batch.completion_ids])[rows]
    adv = prepared.advantages[rows]
    assert out.loss.item() == pytest.approx(-(adv * n).sum().item() / n.sum().item(), abs=1e-5)
    assert out.metrics["clip_ratio"] == 0.0 and out.metrics["kl"] == pytest.approx(0.0, abs=1e-7)
    assert out.metrics["trace_steps"] == 1.0


def test_rewards_are_z_scored_per_group(ab_policy):
    rewards, ids = torch.tensor([1.0, 0.0, 3.0, 3.0, 2.0, 4.0, 0.0]), torch.tensor([5, 5, 1, 1, 9, 9, 9])
    batch = SequenceBatch.from_parts(torch.full((7, 1), 2), torch.full((7, 2), A))
    roll = RolloutBatch(batch, rewards, ids)
    state = TraceRLState(torch.zeros(7, 2))
    s = 2.0  # sample std of (2, 4, 0)
    want = [0.5 / (0.5**0.5 + 1e-4), -0.5 / (0.5**0.5 + 1e-4), 0.0, 0.0, 0.0, 2 / (s + 1e-4), -2 / (s + 1e-4)]
    adv = TraceRL(TraceRLConfig()).weigh(roll, state, context(ab_policy)).state.advantages
    assert torch.allclose(adv, torch.tensor(want), atol=1e-6)
    centred = TraceRL(TraceRLConfig(scale_rewards=False)).weigh(roll, state, context(ab_policy)).state.advantages
    assert torch.equal(centred[:2], torch.tensor([0.5, -0.5]))


def test_a_rollout_without_a_recorded_trajectory_is_a_config_error(ab_policy):
    batch = SequenceBatch.from_parts(torch.tensor([[2, A]]), torch.tensor([[A, B]]))
    for sample in (None, SampleOutput(batch)):
        roll = RolloutBatch(batch, torch.zeros(1), torch.zeros(1, dtype=torch.long), sample)
        with pytest.raises(ConfigError, match="unmask_step"):
            TraceRL(TraceRLConfig()).prepare(roll, context(ab_policy))


def test_tracerl_is_registered_by_its_distribution(registry):
    assert registry.get("objectives", "tracerl") is TraceRL
    assert registry.origin("objectives", "tracerl").startswith("ddrl-tracerl")
