"""Objectives against exact answers: WDCE and DMPO weights (docs/objectives.md), the GRPO family's
PPO pieces, per-group statistics, the gathered (multi-process) normalisation, and the phases
prepare -> weigh -> begin_iteration -> loss on the tiny policies (V = 3 tokens, mask id 3)."""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import pytest
import torch
from torch import Tensor

from ddrl.batch import SequenceBatch, truncate_after_eos
from ddrl.config import ConfigError
from ddrl.estimators.base import MaskedViews
from ddrl.estimators.elbo import ElboConfig, ElboEstimator
from ddrl.estimators.exact import ExactConfig, ExactEstimator
from ddrl.estimators.masks import antithetic_masks
from ddrl.estimators.one_step import OneStepConfig, OneStepEstimator
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.estimators.base import score_views
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.objectives.denoising import wdce
from ddrl.objectives.dmpo import DMPO, DMPOConfig, DMPOState, dmpo_weights
from ddrl.objectives.groups import group_advantages, group_softmax, normalized_ess, per_group
from ddrl.objectives.grpo import CoupledGRPO, CoupledGRPOConfig, DiffuGRPO, DiffuGRPOConfig, GRPOState
from ddrl.objectives.ppo import clipped_surrogate, k3_kl
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.testing import generator as gen, twin as same_state, trainable as params
from tests.conftest import batch_for

PROMPT = [0, 2, 1]
LN2, LN3 = math.log(2.0), math.log(3.0)





def grads(loss: Tensor, policy: torch.nn.Module) -> list[Tensor]:
    # autograd.grad, not backward(): the session-scoped fixture policies must keep .grad empty
    return list(torch.autograd.grad(loss, params(policy), allow_unused=True))


def ctx_for(policy, estimator, **kwargs) -> ObjectiveContext:
    return ObjectiveContext(policy=policy, estimator=estimator, **kwargs)


def elbo() -> ElboEstimator:
    return ElboEstimator(ElboConfig())


def by_group(x: Tensor, ids: Tensor) -> dict[int, Tensor]:
    return {int(g): x[ids == g] for g in ids.unique()}


COMPLETIONS = torch.tensor([[2, 0, 1, 1], [0, 0, 2, 1], [1, 2, 2, 0]])  # (3, L=4)


# ------------------------------------------------------------------------------------------------
# 1. WDCE


def denoising_ce_by_hand(policy, prompt: list[int], completion: Tensor, masked: Tensor) -> Tensor:
    """One sample, its own forward passes: (1/R) sum_r (1/m_r) sum_{d in M_r} -log pi(o with M_r masked)_{d,o_d}.

    ``completion [L]``, ``masked [R, L]``; a view with m_r = 0 contributes 0.
    """
    r = masked.shape[0]
    total = torch.zeros(())
    for view in masked:
        m = int(view.sum())
        if m == 0:
            continue
        canvas = torch.tensor(prompt + completion.tolist())
        canvas[len(prompt) :][view] = policy.mask_token_id
        logp = torch.log_softmax(policy.logits(canvas[None])[0, len(prompt) :].float(), -1)  # (L, V)
        nll = -logp[torch.arange(len(completion)), completion][view].sum()
        total = total + nll / m
    return total / r


def wdce_of(policy: TinyPolicy, rollout: RolloutBatch, advantages: Tensor, views: MaskedViews) -> Tensor:
    """The loss DMPO computes on given views: the pure WDCE of the policy's scores."""
    return wdce(score_views(policy, rollout.batch, views), views.weights, advantages)


def test_wdce_gradient_is_advantage_weighted_sum_of_per_sample_denoising_ce_gradients(token_policy):
    batch = batch_for(PROMPT, COMPLETIONS)
    advantage = torch.tensor([0.7, -0.4, 0.25])
    views = antithetic_masks(batch.completion_mask, 4, gen(0), (0.1, 1.0), "inverse_masked")
    rollout = RolloutBatch(batch, torch.zeros(3), torch.zeros(3, dtype=torch.long))

    loss = wdce_of(token_policy, rollout, advantage, views)
    ces = [
        denoising_ce_by_hand(token_policy, PROMPT, COMPLETIONS[i], views.completion_masked[i]) for i in range(3)
    ]
    by_hand = sum(a * ce for a, ce in zip(advantage, ces))  # sum_i a_i CE_i

    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    for got, want in zip(grads(loss, token_policy), grads(by_hand, token_policy)):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)
    # the per-sample CEs differ, so a wrong pairing of advantages and rows would be caught
    assert len({round(ce.item(), 4) for ce in ces}) == 3


def test_wdce_rows_with_empty_masks_contribute_nothing(token_policy):
    batch = batch_for(PROMPT, COMPLETIONS)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1] = False  # row 1 has no maskable position: every one of its R views is empty
    views = antithetic_masks(valid, 4, gen(1), (0.1, 1.0), "inverse_masked")
    assert not bool(views.completion_masked[1].any())
    rollout = RolloutBatch(batch, torch.zeros(3), torch.zeros(3, dtype=torch.long))

    base = wdce_of(token_policy, rollout, torch.tensor([0.5, 0.0, -0.3]), views)
    huge = wdce_of(token_policy, rollout, torch.tensor([0.5, 100.0, -0.3]), views)
    assert huge.item() == base.item()
    by_hand = 0.5 * denoising_ce_by_hand(token_policy, PROMPT, COMPLETIONS[0], views.completion_masked[0]) - (
        0.3 * denoising_ce_by_hand(token_policy, PROMPT, COMPLETIONS[2], views.completion_masked[2])
    )
    assert base.item() == pytest.approx(by_hand.item(), rel=1e-5)
    for got, want in zip(grads(huge, token_policy), grads(base, token_policy)):
        assert torch.allclose(got, want, atol=1e-7)


def test_loss_masks_never_touch_the_prompt(token_policy):
    prompt_ids = torch.tensor([[3, 3, 0, 2], [1, 0, 2, 1]])  # row 0 left-padded (pad = mask id 3)
    prompt_mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    completions = torch.tensor([[2, 0, 1, 1, 0], [0, 1, 2, 2, 1]])
    batch = SequenceBatch.from_parts(prompt_ids, completions, prompt_mask)
    views = antithetic_masks(batch.completion_mask, 4, gen(2), (0.1, 1.0), "inverse_masked")
    ids, attn = views.canvases(batch, token_policy.mask_token_id)  # (B*R, P+L)

    assert torch.equal(ids[:, :4], prompt_ids.repeat_interleave(4, 0))
    assert torch.equal(attn, batch.attention_mask.repeat_interleave(4, 0))
    masked = views.completion_masked.flatten(0, 1)
    assert torch.equal(ids[:, 4:][masked], torch.full((int(masked.sum()),), 3))
    assert torch.equal(ids[:, 4:][~masked], completions.repeat_interleave(4, 0)[~masked])
    # antithetic: each pair of views masks every completion position exactly once
    assert torch.equal(views.completion_masked.view(2, 2, 2, 5).sum(2), torch.ones(2, 2, 5, dtype=torch.long))


def test_dmpo_loss_draws_r_fresh_antithetic_inverse_masked_views(token_policy):
    batch = batch_for(PROMPT, COMPLETIONS)
    rollout = RolloutBatch(batch, torch.zeros(3), torch.zeros(3, dtype=torch.long))
    objective = DMPO(DMPOConfig(loss_replicates=6, loss_rate_range=(0.2, 0.9)))
    g = gen(3)
    twin = same_state(g)
    advantage = torch.tensor([0.3, -0.6, 0.2])
    out = objective.loss(rollout, DMPOState(torch.zeros(3), advantages=advantage), ctx_for(token_policy, elbo(), generator=g), 0)
    views = antithetic_masks(batch.completion_mask, 6, twin, (0.2, 0.9), "inverse_masked")
    assert out.loss.item() == pytest.approx(wdce_of(token_policy, rollout, advantage, views).item(), rel=1e-6)
    assert out.metrics["wdce"] == pytest.approx(out.loss.item())


# ------------------------------------------------------------------------------------------------
# 2. dmpo_weights

# Three groups of sizes 3, 2 and 4 with interleaved, unsorted ids.
IDS = torch.tensor([3, 1, 3, 2, 1, 3, 2, 2, 2])
LOG_RND = torch.tensor([0.3, -0.2, 0.1, 0.5, 0.0, -0.4, 0.2, -0.1, 0.6])
REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.4, 0.0, 1.0, 0.7, 0.1])


def test_weights_sum_to_zero_with_mean_baseline():
    w = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="mean")
    for g, a in by_group(w.advantages, IDS).items():
        assert a.sum().item() == pytest.approx(0.0, abs=1e-6), g
    # a = w+ - 1/G
    sizes = {1: 2, 2: 4, 3: 3}
    expected = w.w_plus - torch.tensor([1.0 / sizes[int(g)] for g in IDS])
    assert torch.allclose(w.advantages, expected, atol=1e-7)


def test_w_plus_sums_to_one_per_group_and_is_the_advantage_without_baseline():
    w = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="none")
    assert torch.equal(w.advantages, w.w_plus)
    for g, wp in by_group(w.w_plus, IDS).items():
        assert wp.sum().item() == pytest.approx(1.0, abs=1e-6), g
        assert bool((wp > 0).all())


def test_negative_baseline_sums_to_zero_and_vanishes_when_rewards_are_equal():
    rewards = REWARDS.clone()
    rewards[IDS == 2] = 0.7  # group 2: all rewards equal, so w+ == w- and a == 0
    w = dmpo_weights(LOG_RND, rewards, IDS, alpha=0.5, baseline="negative")
    for g, a in by_group(w.advantages, IDS).items():
        assert a.sum().item() == pytest.approx(0.0, abs=1e-6), g
    assert torch.allclose(w.advantages[IDS == 2], torch.zeros(4), atol=1e-7)
    assert w.advantages[IDS == 3].abs().max() > 0.1  # the other groups do get a signal


def test_w_plus_matches_a_softmax_by_hand():
    # tilt = log_rnd + r/alpha = [0, ln2, ln3] -> w+ proportional to [1, 2, 3] = [1/6, 1/3, 1/2]
    # negative: log_rnd - r/alpha = [0, ln2, -ln3] -> w- prop. to [1, 2, 1/3] = [0.3, 0.6, 0.1]
    # a = w+ - w- = [-2/15, -4/15, 2/5]
    alpha = 0.04
    log_rnd = torch.tensor([0.0, LN2, 0.0])
    rewards = torch.tensor([0.0, 0.0, alpha * LN3])
    ids = torch.zeros(3, dtype=torch.long)
    w = dmpo_weights(log_rnd, rewards, ids, alpha=alpha, baseline="negative")
    assert torch.allclose(w.w_plus, torch.tensor([1 / 6, 1 / 3, 1 / 2]), atol=1e-6)
    assert torch.allclose(w.advantages, torch.tensor([-2 / 15, -4 / 15, 2 / 5]), atol=1e-6)
    assert torch.equal(w.proximal, torch.ones(3))
    # ESS = 1 / (3 * (1/36 + 1/9 + 1/4)) = 1 / (3 * 14/36) = 6/7
    assert torch.allclose(w.ess, torch.full((3,), 6 / 7), atol=1e-6)


def test_proximal_coefficient_scales_the_log_weights():
    # c = 0.5: w+ proportional to [1, 2, 3]^0.5 = [1, sqrt2, sqrt3]
    alpha = 0.04
    log_rnd = torch.tensor([0.0, LN2, 0.0])
    rewards = torch.tensor([0.0, 0.0, alpha * LN3])
    w = dmpo_weights(log_rnd, rewards, torch.zeros(3, dtype=torch.long), alpha=alpha, proximal=0.5, baseline="none")
    root = torch.tensor([1.0, math.sqrt(2), math.sqrt(3)])
    assert torch.allclose(w.w_plus, root / root.sum(), atol=1e-6)
    assert torch.equal(w.proximal, torch.full((3,), 0.5))
    # the negative baseline is tilted by the same c: w- proportional to [1, 2, 1/3]^0.5
    neg = dmpo_weights(log_rnd, rewards, torch.zeros(3, dtype=torch.long), alpha=alpha, proximal=0.5, baseline="negative")
    root_minus = torch.tensor([1.0, math.sqrt(2), math.sqrt(1 / 3)])
    assert torch.allclose(neg.advantages, root / root.sum() - root_minus / root_minus.sum(), atol=1e-6)


def test_infinite_temperature_without_log_ratio_gives_uniform_weights():
    rewards = torch.tensor([0.0, 1.0, 5.0, -3.0, 2.0])
    ids = torch.tensor([7, 7, 7, 4, 4])
    w = dmpo_weights(torch.zeros(5), rewards, ids, alpha=1e12, baseline="none")
    assert torch.allclose(w.w_plus, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2]), atol=1e-9)
    assert torch.allclose(w.ess, torch.ones(5), atol=1e-9)


def test_adaptive_proximal_hits_the_target_ess_or_keeps_the_full_tilt():
    # group 5: tilt [0, 4, 8, 12] -> nearly one-hot, ESS ~ 1/4 < 0.7: c shrinks until ESS = 0.7
    # group 1: tilt [0, .01, .02] -> ESS ~ 1 >= 0.7 already: c = proximal = 1
    ids = torch.tensor([5, 1, 5, 5, 1, 5, 1])
    rewards = torch.tensor([0.0, 0.0, 1.0, 2.0, 0.0025, 3.0, 0.005])
    alpha = 0.25
    full = dmpo_weights(torch.zeros(7), rewards, ids, alpha=alpha, baseline="none")
    assert full.ess[0] < 0.3

    w = dmpo_weights(torch.zeros(7), rewards, ids, alpha=alpha, target_ess=0.7, baseline="none")
    sharp, mild = ids == 5, ids == 1
    c = w.proximal[sharp]
    assert torch.all(c == c[0]) and 0 < c[0] < 1
    wp = w.w_plus[sharp].double()
    assert torch.allclose(wp, torch.softmax(c[0].double() * rewards[sharp].double() / alpha, 0), atol=1e-6)
    ess = 1.0 / (4 * (wp**2).sum())
    assert ess.item() == pytest.approx(0.7, abs=1e-3)
    assert torch.allclose(w.ess[sharp], torch.full((4,), ess.item()), atol=1e-6)
    assert torch.equal(w.proximal[mild], torch.ones(3))
    assert torch.allclose(w.w_plus[mild], full.w_plus[mild])


def test_unbiased_baseline_needs_the_current_log_ratio_and_equals_mean_at_zero():
    with pytest.raises(ValueError, match="current_log_ratio"):
        dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="unbiased")
    unbiased = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="unbiased", current_log_ratio=torch.zeros(9))
    mean = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="mean")
    assert torch.allclose(unbiased.advantages, mean.advantages, atol=1e-7)
    # a non-zero current ratio moves the baseline: centre = softmax_G(log p_theta - log p_old)
    shifted = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="unbiased", current_log_ratio=LOG_RND)
    expected = mean.w_plus - group_softmax(LOG_RND.double(), IDS).float()
    assert torch.allclose(shifted.advantages, expected, atol=1e-6)


def test_scale_by_std_divides_by_the_group_std_of_the_advantages():
    plain = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="mean")
    scaled = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="mean", scale_by_std=True)
    for g in IDS.unique():
        rows = IDS == g
        a = plain.advantages[rows].double()
        assert torch.allclose(scaled.advantages[rows].double(), a / a.std(), atol=1e-5)  # std with n - 1


def test_strength_scales_the_baseline():
    none = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="none")
    half = dmpo_weights(LOG_RND, REWARDS, IDS, alpha=0.5, baseline="mean", strength=0.5)
    sizes = torch.tensor([{1: 2, 2: 4, 3: 3}[int(g)] for g in IDS], dtype=torch.float)
    assert torch.allclose(half.advantages, none.w_plus - 0.5 / sizes, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# 3. Normalisation over the group gathered from every process


def run_two_ranks(fn: Callable[[int, Callable[[Tensor], Tensor]], Any]) -> list[Any]:
    """Run ``fn(rank, gather)`` for ranks 0 and 1 in lockstep: the k-th ``gather`` of each rank meet
    like a real all-gather and both get ``cat([rank0_part, rank1_part])``."""
    barrier = threading.Barrier(2, timeout=20)
    slots: list[Tensor | None] = [None, None]
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def gather_for(rank: int) -> Callable[[Tensor], Tensor]:
        def gather(t: Tensor) -> Tensor:
            slots[rank] = t
            barrier.wait()
            out = torch.cat([slots[0], slots[1]])  # type: ignore[list-item]
            barrier.wait()
            return out

        return gather

    def target(rank: int) -> None:
        try:
            results[rank] = fn(rank, gather_for(rank))
        except BaseException as e:  # noqa: BLE001 - reraised below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# 8 rows, 4 per rank; groups 7 and 3 each have 2 rows on each rank.
G_IDS = torch.tensor([7, 3, 7, 3, 3, 7, 7, 3])
G_REWARDS = torch.tensor([1.0, 0.2, 0.0, 0.9, 0.5, 0.3, 0.8, 0.0])
G_LOG_RND = torch.tensor([0.4, -0.3, 0.1, 0.2, -0.5, 0.0, 0.3, 0.6])
G_COMPLETIONS = torch.tensor([[0, 1, 2], [1, 1, 0], [2, 0, 0], [0, 0, 1], [1, 2, 2], [2, 2, 1], [0, 2, 0], [1, 0, 2]])


def rank_rollout(rank: int) -> tuple[RolloutBatch, slice]:
    rows = slice(4 * rank, 4 * rank + 4)
    return RolloutBatch(batch_for(PROMPT, G_COMPLETIONS[rows]), G_REWARDS[rows], G_IDS[rows]), rows


@pytest.mark.parametrize(
    "config",
    [
        DMPOConfig(alpha=0.5, replay=1),
        DMPOConfig(alpha=0.5, baseline="mean", scale_by_std=True, replay=1),
        DMPOConfig(alpha=0.2, target_ess=0.7, replay=1),
    ],
    ids=["none", "mean-std", "adaptive-c"],
)
def test_dmpo_normalises_each_group_over_every_process(token_policy, config):
    objective = DMPO(config)

    def weigh(rank: int, gather: Callable[[Tensor], Tensor]) -> Tensor:
        rollout, rows = rank_rollout(rank)
        ctx = ctx_for(token_policy, elbo(), gather=gather, process_index=rank)
        return objective.weigh(rollout, DMPOState(G_LOG_RND[rows]), ctx).state.advantages

    per_rank = run_two_ranks(weigh)
    full = dmpo_weights(
        G_LOG_RND, G_REWARDS, G_IDS, config.alpha, config.proximal, config.target_ess, config.baseline,
        config.baseline_strength, config.scale_by_std,
    ).advantages
    assert torch.allclose(torch.cat(per_rank), full, atol=1e-6)
    for rank in range(2):
        rollout, rows = rank_rollout(rank)
        alone = objective.weigh(rollout, DMPOState(G_LOG_RND[rows]), ctx_for(token_policy, elbo())).state.advantages
        assert not torch.allclose(alone, per_rank[rank], atol=1e-3)


NO_VIEWS = GRPOState([], torch.zeros(4, 1, 3))  # weigh reads only the rewards


@pytest.mark.parametrize(
    "objective",
    [DiffuGRPO(DiffuGRPOConfig()), CoupledGRPO(CoupledGRPOConfig()), DiffuGRPO(DiffuGRPOConfig(scale_rewards=True))],
    ids=["group_mean", "leave_one_out", "group_mean-scaled"],
)
def test_grpo_advantages_use_the_group_gathered_over_every_process(token_policy, objective):
    estimator = OneStepEstimator(OneStepConfig())

    def weigh(rank: int, gather: Callable[[Tensor], Tensor]) -> Tensor:
        rollout, _ = rank_rollout(rank)
        ctx = ctx_for(token_policy, estimator, gather=gather, process_index=rank)
        return objective.weigh(rollout, NO_VIEWS, ctx).state.advantages

    per_rank = run_two_ranks(weigh)
    cfg = objective.config
    full = group_advantages(G_REWARDS, G_IDS, cfg.baseline, cfg.scale_rewards).float()
    assert torch.allclose(torch.cat(per_rank), full, atol=1e-6)
    for rank in range(2):
        rollout, _ = rank_rollout(rank)
        alone = objective.weigh(rollout, NO_VIEWS, ctx_for(token_policy, estimator)).state.advantages
        assert not torch.allclose(alone, per_rank[rank], atol=1e-3)


# ------------------------------------------------------------------------------------------------
# 4. PPO pieces of the GRPO family


def test_clipped_surrogate_symmetric_against_hand_values():
    # column 0: logp - old = ln 2 -> ratio 2, clip(2, 0.5, 1.5) = 1.5
    #   A = +1: min(2, 1.5) = 1.5 -> loss -1.5, high-clipped
    #   A = -1: min(-2, -1.5) = -2 -> loss 2, not clipped (the unclipped term is the pessimistic one)
    # column 1: logp - old = ln 1/4 -> ratio 0.25, clip = 0.5
    #   A = +1: min(0.25, 0.5) = 0.25 -> loss -0.25, not clipped
    #   A = -1: min(-0.25, -0.5) = -0.5 -> loss 0.5, low-clipped
    logp = torch.tensor([[LN2, -math.log(4.0)], [LN2, -math.log(4.0)]])
    out = clipped_surrogate(logp, torch.zeros(2, 2), torch.tensor([1.0, -1.0]), 0.5, 0.5)
    assert torch.allclose(out.ratio, torch.tensor([[2.0, 0.25], [2.0, 0.25]]))
    assert torch.allclose(out.loss, torch.tensor([[-1.5, -0.25], [2.0, 0.5]]))
    assert torch.equal(out.high_clipped, torch.tensor([[True, False], [False, False]]))
    assert torch.equal(out.low_clipped, torch.tensor([[False, False], [False, True]]))


def test_clipped_surrogate_asymmetric_bounds():
    # eps_low 0.2, eps_high 0.28: clip range [0.8, 1.28]
    #   ratio 2,   A = +1: min(2, 1.28) -> loss -1.28 (high-clipped)
    #   ratio 0.5, A = -1: min(-0.5, -0.8) -> loss 0.8 (low-clipped)
    #   ratio 1.2, A = +1: inside -> loss -1.2
    old = torch.zeros(3, 1)
    logp = torch.tensor([[LN2], [-LN2], [math.log(1.2)]])
    out = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0, 1.0]), 0.2, 0.28)
    assert torch.allclose(out.loss, torch.tensor([[-1.28], [0.8], [-1.2]]))
    assert out.high_clipped.flatten().tolist() == [True, False, False]
    assert out.low_clipped.flatten().tolist() == [False, True, False]


def test_clipped_surrogate_gradient_vanishes_only_where_clipped():
    # d loss / d logp = -A r where the unclipped term is chosen, 0 where the clipped one is
    logp = torch.tensor([[LN2, -LN2]], requires_grad=True)
    out = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.5, 0.5)
    (g,) = torch.autograd.grad(out.loss.sum(), logp)
    # ratio 2 (clipped at 1.5): 0; ratio 0.5 (A > 0, min picks r A): -0.5
    assert torch.allclose(g, torch.tensor([[0.0, -0.5]]))


def test_k3_kl_is_exp_d_minus_d_minus_one():
    # d = ref - logp: [ln2, -ln2, 0] -> [2 - ln2 - 1, 1/2 + ln2 - 1, 0]
    logp = torch.tensor([[0.0, LN2, -1.3]])
    ref = torch.tensor([[LN2, 0.0, -1.3]])
    kl = k3_kl(logp, ref)
    assert torch.allclose(kl, torch.tensor([[1 - LN2, LN2 - 0.5, 0.0]]))
    assert kl[0, 2].item() == 0.0
    assert bool((kl[0, :2] > 0).all())


def test_group_advantages_group_mean_and_leave_one_out_by_hand():
    # group 9 = rows 0, 2, 4, 5 with rewards [1, 2, 3, 6]: mean 3 -> [-2, -1, 0, 3]
    #   leave-one-out baselines [(2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3] = [11/3, 10/3, 3, 2]
    #   -> [-8/3, -4/3, 0, 4]
    # group 4 = rows 1, 3 with rewards [0, 1]: mean 1/2 -> [-1/2, 1/2]; LOO -> [-1, 1]
    rewards = torch.tensor([1.0, 0.0, 2.0, 1.0, 3.0, 6.0])
    ids = torch.tensor([9, 4, 9, 4, 9, 9])
    mean = group_advantages(rewards, ids, "group_mean", scale=False)
    assert mean.dtype == torch.float64  # callers round where they need float32
    assert torch.allclose(mean, torch.tensor([-2.0, -0.5, -1.0, 0.5, 0.0, 3.0], dtype=torch.float64))
    loo = group_advantages(rewards, ids, "leave_one_out", scale=False)
    assert torch.allclose(loo, torch.tensor([-8 / 3, -1.0, -4 / 3, 1.0, 0.0, 4.0], dtype=torch.float64))


def test_leave_one_out_with_a_group_of_one_raises():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]), "leave_one_out", scale=False)


def test_scale_rewards_divides_by_group_std_plus_1e_4():
    # group 0: rewards [1, 2, 3, 6], squared deviations 4 + 1 + 0 + 9 = 14, std = sqrt(14/3)
    # group 1: rewards [5, 5] -> std 0 -> advantages 0 / 1e-4 = 0
    rewards = torch.tensor([1.0, 2.0, 5.0, 3.0, 6.0, 5.0])
    ids = torch.tensor([0, 0, 1, 0, 0, 1])
    std = math.sqrt(14 / 3)
    got = group_advantages(rewards, ids, "group_mean", scale=True).float()
    expected = torch.tensor([-2.0, -1.0, 0.0, 0.0, 3.0, 0.0]) / (std + 1e-4)
    assert torch.allclose(got, expected, atol=1e-6)
    loo = group_advantages(rewards, ids, "leave_one_out", scale=True).float()
    assert torch.allclose(loo, torch.tensor([-8 / 3, -4 / 3, 0.0, 0.0, 4.0, 0.0]) / (std + 1e-4), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 5. groups.py


def test_group_softmax_equals_softmax_within_each_group_with_unsorted_ids():
    x = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0, -0.5, 1.0], dtype=torch.float64)
    ids = torch.tensor([8, 2, 8, 5, 2, 8, 5])
    got = group_softmax(x, ids)
    for g in ids.unique():
        rows = ids == g
        assert torch.allclose(got[rows], torch.softmax(x[rows], 0))


def test_group_softmax_is_stable_for_large_logits():
    x = torch.tensor([1000.0, 1000.0 + LN2, -1000.0, -1000.0], dtype=torch.float64)  # exp() overflows / underflows
    got = group_softmax(x, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(got, torch.tensor([1 / 3, 2 / 3, 0.5, 0.5], dtype=torch.float64))


def test_normalized_ess_is_one_for_uniform_and_one_over_g_for_one_hot():
    ids = torch.tensor([1, 0, 1, 1, 0, 1])
    uniform = torch.tensor([0.25, 0.5, 0.25, 0.25, 0.5, 0.25])
    assert torch.allclose(normalized_ess(uniform, ids), torch.ones(6))
    one_hot = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(normalized_ess(one_hot, ids), torch.tensor([0.25, 0.5, 0.25, 0.25, 0.5, 0.25]))


def test_per_group_picks_the_first_row_of_each_group_in_id_order():
    ids = torch.tensor([5, 2, 5, 9, 2])
    x = torch.tensor([10.0, 20.0, 11.0, 30.0, 21.0])
    assert per_group(x, ids).tolist() == [20.0, 10.0, 30.0]  # groups 2, 5, 9


# ------------------------------------------------------------------------------------------------
# 6. The phases on the real policy


def test_dmpo_with_reference_equal_to_old_has_zero_log_ratio_and_a_differentiable_loss(token_policy):
    batch = batch_for(PROMPT, G_COMPLETIONS[:4])
    rollout = RolloutBatch(batch, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    objective = DMPO(DMPOConfig(preset="published"))  # the negative baseline, no defensive share
    g = gen(4)
    ctx = ctx_for(token_policy, elbo(), ref_policy=token_policy, generator=g)
    with torch.no_grad():
        state = objective.prepare(rollout, ctx)
        # the same views scored by the same weights: log p_ref - log p_old is 0 exactly
        assert torch.equal(state.log_rnd, torch.zeros(4))
        assert bool((state.old_logp < 0).all())
        assert state.views.num_views == 4
        weighed = objective.weigh(rollout, state, ctx)
    # alpha = 0.04: w+ = softmax([25, 0]) ~ [1, e^-25], w- ~ [e^-25, 1] -> a ~ [1, -1] per group
    prepared = weighed.state
    assert torch.allclose(prepared.advantages, torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-6)
    assert weighed.metrics["num_groups"] == 2.0
    assert weighed.metrics["log_ratio_mean"] == 0.0

    twin = same_state(g)
    out = objective.loss(rollout, prepared, ctx, 0)
    assert out.loss.dim() == 0 and bool(torch.isfinite(out.loss)) and out.loss.requires_grad
    views = antithetic_masks(batch.completion_mask, 4, twin, (0.1, 1.0), "inverse_masked")
    assert out.loss.item() == pytest.approx(wdce_of(token_policy, rollout, prepared.advantages, views).item())
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads(out.loss, token_policy))


def test_dmpo_unbiased_baseline_reestimates_the_current_ratio_each_iteration(token_policy, token_policy_b):
    batch = batch_for(PROMPT, G_COMPLETIONS[:4])
    rollout = RolloutBatch(batch, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    objective = DMPO(DMPOConfig(baseline="unbiased", alpha=1.0))
    ctx = ctx_for(token_policy, elbo(), ref_policy=token_policy_b, generator=gen(5))
    with torch.no_grad():
        prepared = objective.weigh(rollout, objective.prepare(rollout, ctx), ctx).state
        log_rnd = prepared.log_rnd
        assert log_rnd.abs().min() > 1e-3  # ref != old
        mean = dmpo_weights(log_rnd, rollout.rewards, rollout.group_ids, 1.0, baseline="mean").advantages
        assert torch.allclose(prepared.advantages, mean, atol=1e-7)  # iteration 0: theta == old
        # unchanged policy at iteration 1: log p_theta - log p_old = 0 on the same views
        again = objective.begin_iteration(rollout, prepared, ctx, 1)
        assert torch.allclose(again.advantages, mean, atol=1e-7)
        # the policy moved (here: to token_policy_b): centre = softmax(lp_now - lp_old)
        moved = ctx_for(token_policy_b, elbo(), ref_policy=token_policy_b)
        later = objective.begin_iteration(rollout, prepared, moved, 1)
        lp_now = elbo().score(token_policy_b, batch, prepared.views).sequence()
        expected = dmpo_weights(
            log_rnd, rollout.rewards, rollout.group_ids, 1.0, baseline="unbiased",
            current_log_ratio=lp_now - prepared.old_logp,
        ).advantages
    assert torch.allclose(later.advantages, expected, atol=1e-6)
    assert not torch.allclose(later.advantages, mean, atol=1e-3)


def test_dmpo_path_log_ratio_is_the_exact_ratio_along_the_sampled_order(token_policy, token_policy_b):
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=4, temperature=1.0))
    prompts = torch.tensor([PROMPT] * 4)
    out = sampler.sample(token_policy, prompts, generator=gen(6), scorers=[token_policy_b])
    rollout = RolloutBatch(out.batch, torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), out)
    objective = DMPO(DMPOConfig(log_ratio="path", defensive=0.0))
    ctx = ctx_for(token_policy, ExactEstimator(ExactConfig()), ref_policy=token_policy_b)
    assert objective.rollout_scorers(ctx) == [token_policy_b]
    with torch.no_grad():
        log_rnd = objective.prepare(rollout, ctx).log_rnd
        assert torch.equal(log_rnd, out.scorer_logprobs[0].sum(-1) - out.token_logprobs.sum(-1))
        exact = ExactEstimator(ExactConfig())
        lp_ref = exact.log_likelihood(token_policy_b, out.batch, order=out.order)
        lp_old = exact.log_likelihood(token_policy, out.batch, order=out.order)
    assert torch.allclose(log_rnd, lp_ref - lp_old, atol=1e-5)
    assert log_rnd.abs().min() > 1e-2  # the two policies differ: the check has teeth


def test_dmpo_defaults_use_the_exact_path_where_the_sampler_records_it_and_the_estimator_elsewhere(
    token_policy, token_policy_b
):
    objective = DMPO(DMPOConfig(defensive=0.0))  # log_ratio: auto
    ancestral = AncestralSampler(AncestralSamplerConfig(max_completion_length=4, temperature=1.0))
    out = ancestral.sample(token_policy, torch.tensor([PROMPT] * 4), generator=gen(6), scorers=[token_policy_b])
    rollout = RolloutBatch(out.batch, torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), out)
    exact = ExactEstimator(ExactConfig())
    recorded = ctx_for(token_policy, exact, ref_policy=token_policy_b, sampler_records=ancestral.records,
                       generator=gen(1))
    assert objective.rollout_scorers(recorded) == [token_policy_b]
    with torch.no_grad():
        path = objective.prepare(rollout, recorded).log_rnd
        assert torch.equal(path, out.scorer_logprobs[0].sum(-1) - out.token_logprobs.sum(-1))
        # a sampler without the record (e.g. block with several tokens per step): the estimator's ratio
        unrecorded = ctx_for(token_policy, elbo(), ref_policy=token_policy_b, sampler_records=frozenset({"token_logprobs"}),
                             generator=gen(1))
        assert objective.rollout_scorers(unrecorded) == []
        estimated = objective.prepare(rollout, unrecorded).log_rnd
        views = elbo().draw(out.batch, gen(1), out.order)  # the same masks for both policies
        expected = elbo().score(token_policy_b, out.batch, views).sequence() - elbo().score(token_policy, out.batch, views).sequence()
    assert torch.allclose(estimated, expected, atol=1e-5)
    assert not torch.allclose(estimated, path, atol=1e-2)  # ELBO masks vs the recorded path: they differ
    assert DMPO(DMPOConfig(preset="published")).config.log_ratio == "estimator"  # the paper's ELBO weights


def test_dmpo_path_log_ratio_without_recorded_scorer_logprobs_is_a_config_error(token_policy):
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=3, temperature=1.0))
    out = sampler.sample(token_policy, torch.tensor([PROMPT] * 2), generator=gen(7))  # no scorers
    objective = DMPO(DMPOConfig(log_ratio="path"))
    ctx = ctx_for(token_policy, ExactEstimator(ExactConfig()), ref_policy=token_policy)
    for sample in (out, None):
        rollout = RolloutBatch(out.batch, torch.zeros(2), torch.zeros(2, dtype=torch.long), sample)
        with pytest.raises(ConfigError, match="ancestral"):
            objective.prepare(rollout, ctx)


def test_diffu_grpo_iterations_reuse_their_own_views_so_the_ratio_starts_at_one(token_policy):
    # rewards [1, 3, 0, 5] in groups [0, 1, 0, 1]: means 1/2 and 4 -> A = [1/2, -1, -1/2, 1]
    # ratio 1 everywhere -> per-token loss -A, token mean over a chunk of 2 rows x 4 tokens:
    #   rows 0-1: -(1/2 - 1)/2 = 1/4;  rows 2-3: -(-1/2 + 1)/2 = -1/4
    # reference == old: k3 KL is 0
    batch = batch_for([0, 2, 1, 1, 0, 2], G_COMPLETIONS[:4].repeat(1, 2)[:, :4])
    rollout = RolloutBatch(batch, torch.tensor([1.0, 3.0, 0.0, 5.0]), torch.tensor([0, 1, 0, 1]))
    objective = DiffuGRPO(DiffuGRPOConfig())
    ctx = ctx_for(
        token_policy, OneStepEstimator(OneStepConfig(p_mask_prompt=0.5)), ref_policy=token_policy,
        generator=gen(8), num_iterations=2,
    )
    with torch.no_grad():
        prepared = objective.weigh(rollout, objective.prepare(rollout, ctx), ctx).state
    assert len(prepared.views) == 2
    assert prepared.old_logp.shape == (4, 2, 4) and prepared.ref_logp.shape == (4, 2, 4)
    assert torch.allclose(prepared.advantages, torch.tensor([0.5, -1.0, -0.5, 1.0]))
    v0, v1 = prepared.views
    assert not torch.equal(v0.prompt_masked, v1.prompt_masked)  # fresh masks per iteration
    assert not torch.allclose(prepared.old_logp[:, 0], prepared.old_logp[:, 1], atol=1e-3)

    for iteration in range(2):
        for rows, expected in ((slice(0, 2), 0.25), (slice(2, 4), -0.25)):
            out = objective.loss(rollout.index(rows), prepared.index(rows), ctx, iteration)
            assert out.loss.item() == pytest.approx(expected, abs=1e-6), (iteration, rows)
            assert out.metrics["clip_ratio"] == 0.0
            assert out.metrics["kl"] == pytest.approx(0.0, abs=1e-6)
            assert out.loss.requires_grad


@pytest.fixture(scope="module")
def ab_policy() -> TinyPolicy:
    """A character policy over {a, b}: ids 5, 6; mask 1; EOS 3."""
    arch = TinyArchitecture(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, init_std=0.3)
    return TinyPolicy.fresh(arch, CharTokenizer("ab"), seed=0).eval()


@pytest.mark.parametrize("mask_after_eos, expected", [(True, 1 / 14), (False, 0.0)])
def test_diffu_grpo_ignores_tokens_after_the_first_eos(ab_policy, mask_after_eos, expected):
    # A = [1/2, -1/2]; row 0 = "a b <eos> a" counts 3 tokens, row 1 = "a a b b" counts 4:
    #   mask_after_eos: loss = -(3 * 1/2 - 4 * 1/2) / 7 = 1/14;  otherwise -(4/2 - 4/2) / 8 = 0
    a, b, eos = 5, 6, ab_policy.eos_token_id
    assert eos == 3
    batch = batch_for([2, a, b], torch.tensor([[a, b, eos, a], [a, a, b, b]]))
    rollout = RolloutBatch(batch, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    objective = DiffuGRPO(DiffuGRPOConfig(beta=0.0, mask_after_eos=mask_after_eos))
    ctx = ctx_for(ab_policy, OneStepEstimator(OneStepConfig()), generator=gen(9))
    with torch.no_grad():
        prepared = objective.weigh(rollout, objective.prepare(rollout, ctx), ctx).state
    assert prepared.ref_logp is None
    scored = prepared.views[0].scored[:, 0]
    if mask_after_eos:
        assert torch.equal(scored, torch.tensor([[True, True, True, False], [True, True, True, True]]))
        assert torch.equal(scored, truncate_after_eos(batch.completion_ids, eos))
    else:
        assert bool(scored.all())
    out = objective.loss(rollout, prepared, ctx, 0)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_dmpo_mask_after_eos_never_masks_tokens_after_the_first_eos(ab_policy):
    a, b, eos = 5, 6, ab_policy.eos_token_id
    batch = batch_for([2, a, b], torch.tensor([[a, eos, b, eos], [b, a, a, b]]))
    rollout = RolloutBatch(batch, torch.zeros(2), torch.zeros(2, dtype=torch.long))
    objective = DMPO(DMPOConfig(mask_after_eos=True))
    assert DMPOConfig(mask_up_to_eos=True).mask_after_eos  # the option's earlier name still loads
    g = gen(11)
    twin = same_state(g)
    advantage = torch.tensor([0.6, -0.6])
    out = objective.loss(rollout, DMPOState(torch.zeros(2), advantages=advantage), ctx_for(ab_policy, elbo(), generator=g), 0)
    # row 0 may be masked at positions 0, 1 only ("a <eos>"); row 1 everywhere
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert torch.equal(valid, truncate_after_eos(batch.completion_ids, eos))
    views = antithetic_masks(valid, 4, twin, (0.1, 1.0), "inverse_masked")
    assert not bool(views.completion_masked[0, :, 2:].any())
    assert out.loss.item() == pytest.approx(wdce_of(ab_policy, rollout, advantage, views).item(), rel=1e-6)


def test_dmpo_unbiased_baseline_with_path_weights_also_reestimates(token_policy, token_policy_b):
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=4, temperature=1.0))
    out = sampler.sample(token_policy, torch.tensor([PROMPT] * 4), generator=gen(8), scorers=[token_policy_b])
    rollout = RolloutBatch(out.batch, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]), out)
    objective = DMPO(DMPOConfig(log_ratio="path", baseline="unbiased", alpha=1.0))
    ctx = ctx_for(token_policy, elbo(), ref_policy=token_policy_b, generator=gen(9))
    with torch.no_grad():
        prepared = objective.weigh(rollout, objective.prepare(rollout, ctx), ctx).state
        mean = dmpo_weights(prepared.log_rnd, rollout.rewards, rollout.group_ids, 1.0, baseline="mean").advantages
        assert torch.allclose(prepared.advantages, mean, atol=1e-7)
        moved = objective.begin_iteration(rollout, prepared, ctx_for(token_policy_b, elbo(), ref_policy=token_policy_b), 1)
    assert not torch.allclose(moved.advantages, mean, atol=1e-3)
