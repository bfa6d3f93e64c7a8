"""wd1 against exact answers: the weights by hand, the invariances, and the loss and its gradient
against a hand loop over d1's one-step canvases on a tiny enumerable policy."""

from __future__ import annotations

import math

import pytest
import torch

from ddrl.batch import SequenceBatch
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.testing import build, generator, trainable, twin
from ddrl_wd1 import WD1, WD1Config, wd1_loss, wd1_weights

A, B, EOS, MASK = 5, 6, 3, 1
PROMPT = [2, A, B]  # BOS a b
COMPLETIONS = torch.tensor([[A, B, EOS, A], [B, B, A, A], [A, EOS, EOS, B], [B, A, B, EOS]])


def rollout(rewards: list[float], ids: list[int]) -> RolloutBatch:
    n = COMPLETIONS.shape[0]
    batch = SequenceBatch.from_parts(torch.tensor(PROMPT).expand(n, -1).clone(), COMPLETIONS)
    return RolloutBatch(batch, torch.tensor(rewards), torch.tensor(ids))


def run_loss(objective: WD1, roll: RolloutBatch, policy, estimator, generator: torch.Generator):
    ctx = ObjectiveContext(policy=policy, estimator=estimator, generator=generator)
    with torch.no_grad():
        state = objective.weigh(roll, objective.prepare(roll, ctx), ctx).state
    return objective.loss(roll, state, ctx, 0), state


# ------------------------------------------------------------------------------------------------
# weights


@pytest.mark.parametrize("a", [0.3, 1.0, 2.5])
def test_opposite_advantages_give_plus_and_minus_tanh(a):
    # group 7: rewards (a, -a) -> A = (a, -a); group 3: rewards (2a + 1, 1) -> A = (a, -a) as well
    w = wd1_weights(torch.tensor([a, 2 * a + 1, -a, 1.0]), torch.tensor([7, 3, 7, 3]))
    t = math.tanh(a)
    assert torch.allclose(w.coefficient, torch.tensor([t, t, -t, -t]), atol=1e-6)
    assert torch.allclose(w.advantages, torch.tensor([a, a, -a, -a]), atol=1e-6)


def test_weights_are_softmaxes_of_the_centred_rewards_by_hand():
    rewards, ids = torch.tensor([1.0, 0.0, 0.5, 3.0]), torch.tensor([0, 0, 0, 1])
    w = wd1_weights(rewards, ids)
    adv = [0.5, -0.5, 0.0]  # mean 0.5
    z_plus, z_minus = sum(math.exp(x) for x in adv), sum(math.exp(-x) for x in adv)
    want_plus = [math.exp(x) / z_plus for x in adv] + [1.0]
    want_minus = [math.exp(-x) / z_minus for x in adv] + [1.0]
    assert torch.allclose(w.w_plus, torch.tensor(want_plus), atol=1e-6)
    assert torch.allclose(w.w_minus, torch.tensor(want_minus), atol=1e-6)
    assert torch.allclose(w.coefficient, torch.tensor(want_plus) - torch.tensor(want_minus), atol=1e-6)
    assert w.coefficient[3].item() == 0.0  # a group of one carries no signal
    positive = wd1_weights(rewards, ids, positive_only=True)
    assert torch.allclose(positive.coefficient, torch.tensor(want_plus), atol=1e-6)


def test_shifting_rewards_leaves_the_loss_unchanged_and_scaling_changes_it():
    rewards, ids = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9]), torch.tensor([0, 0, 0, 1, 1])
    s = torch.tensor([-3.0, -1.5, -2.0, -4.0, -0.5])  # S_i, fixed
    base = wd1_loss(wd1_weights(rewards, ids).coefficient, s)
    shifted = wd1_loss(wd1_weights(rewards + 7.25, ids).coefficient, s)
    scaled = wd1_loss(wd1_weights(rewards * 3.0, ids).coefficient, s)
    assert shifted.item() == pytest.approx(base.item(), abs=1e-6)
    assert abs(scaled.item() - base.item()) > 0.1


def test_weights_use_the_group_gathered_from_every_process():
    # this process holds rows 0-1 of group 4 and row 0 of group 9; the other holds the rest
    local_r, local_ids = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([4, 4, 9])
    remote_r, remote_ids = torch.tensor([0.5, 0.0, 5.0]), torch.tensor([4, 9, 9])

    remote_completions = torch.ones(3, 2, dtype=torch.long)

    def gather(t: torch.Tensor) -> torch.Tensor:  # ids, rewards and completions, each with the other rank's
        remote = remote_completions if t.dim() == 2 else remote_ids if t.dtype == torch.long else remote_r
        return torch.cat([t, remote])

    objective = WD1(WD1Config())
    roll = RolloutBatch(SequenceBatch.from_parts(torch.ones(3, 1, dtype=torch.long), torch.ones(3, 2, dtype=torch.long)),
                        local_r, local_ids)
    ctx = ObjectiveContext(policy=None, estimator=None, gather=gather)  # type: ignore[arg-type]
    weighed = objective.weigh(roll, objective.prepare(roll, ctx), ctx)
    whole = wd1_weights(torch.cat([local_r, remote_r]), torch.cat([local_ids, remote_ids]))
    assert torch.equal(weighed.state.coefficient, whole.coefficient[:3])
    assert weighed.metrics["num_groups"] == 2.0


# ------------------------------------------------------------------------------------------------
# the loss on a policy


def one_step_log_likelihood_by_hand(policy, views) -> torch.Tensor:
    """S_i by hand: prompt masked where the view says, the whole completion masked, log-probs of
    o_t summed over t up to and including the first EOS. ``[B]``, differentiable."""
    out = []
    for i, completion in enumerate(COMPLETIONS.tolist()):
        prompt = [MASK if views.prompt_masked[i, 0, j] else tok for j, tok in enumerate(PROMPT)]
        logits = policy.logits(torch.tensor([prompt + [MASK] * len(completion)]))[0, len(PROMPT):]
        logp = torch.log_softmax(logits.float(), -1)
        upto = completion.index(EOS) + 1 if EOS in completion else len(completion)
        out.append(sum(logp[t, completion[t]] for t in range(upto)))
    return torch.stack(out)


def test_loss_and_gradient_equal_a_hand_loop_over_one_step_canvases(registry, ab_policy):
    estimator = build(registry, "estimators", "one_step", p_mask_prompt=0.5)  # 0.5: masks vary
    roll = rollout([1.0, 0.0, 0.25, 0.5], [0, 0, 1, 1])
    g = generator(3)
    replay = twin(g)
    out, prepared = run_loss(WD1(WD1Config()), roll, ab_policy, estimator, g)

    views = estimator.draw(roll.batch, replay)  # the views the loss drew
    assert bool(views.prompt_masked.any()) and not bool(views.prompt_masked.all())
    s = one_step_log_likelihood_by_hand(ab_policy, views)
    e = math.exp
    c0 = (e(0.5) - e(-0.5)) / (e(0.5) + e(-0.5))  # group 0: A = (0.5, -0.5); group 1: A = (-0.125, 0.125)
    c1 = (e(0.125) - e(-0.125)) / (e(0.125) + e(-0.125))
    coefficient = torch.tensor([c0, -c0, -c1, c1])
    assert torch.allclose(prepared.coefficient, coefficient, atol=1e-6)
    by_hand = -(coefficient * s).sum()
    assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
    got = torch.autograd.grad(out.loss, trainable(ab_policy))
    want = torch.autograd.grad(by_hand, trainable(ab_policy))
    for x, y in zip(got, want):
        assert torch.allclose(x, y, atol=1e-6)
    assert out.metrics["log_likelihood"] == pytest.approx(s.mean().item(), abs=1e-5)


def test_equal_rewards_give_exactly_zero_loss_and_gradient(registry, ab_policy):
    estimator = build(registry, "estimators", "one_step")
    out, prepared = run_loss(WD1(WD1Config()), rollout([0.7] * 4, [0, 0, 1, 1]), ab_policy, estimator, generator(4))
    assert torch.equal(prepared.coefficient, torch.zeros(4))
    assert out.loss.item() == 0.0
    grads = torch.autograd.grad(out.loss, trainable(ab_policy), allow_unused=True)
    assert all(g is None or bool((g == 0).all()) for g in grads)
    # positive_only keeps softmax(A) = 1/2 each: a plain likelihood push, not zero
    out, _ = run_loss(WD1(WD1Config(positive_only=True)), rollout([0.7] * 4, [0, 0, 1, 1]), ab_policy, estimator, generator(4))
    assert out.loss.item() > 0


def test_wd1_is_registered_by_its_distribution(registry):
    assert registry.get("objectives", "wd1") is WD1
    assert registry.origin("objectives", "wd1").startswith("ddrl-wd1")
    assert WD1.preferred_estimator == "one_step"
