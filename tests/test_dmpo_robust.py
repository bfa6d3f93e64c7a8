"""DMPO's robust defaults: the defensive mixture proposal, no silent stall, the published preset."""

from __future__ import annotations

import math

import pytest
import torch

from ddrl.config import ConfigError
from ddrl.estimators.exact import ExactConfig, ExactEstimator
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.objectives.dmpo import DMPO, PUBLISHED, DMPOConfig, mixture_log_ratio
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.samplers.mixture import sample_mixture
from ddrl.training.rollout import RolloutPlan

ARCH = TinyArchitecture(vocab_size=4, d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, init_std=0.3)
PROMPTS = torch.tensor([[0, 1]] * 8 + [[2, 2]] * 8)  # two prompts, G = 8
GROUPS = torch.arange(16) // 8


class Stuck(TinyPolicy):
    """A policy that has collapsed onto one completion: token 0 everywhere (logit +8)."""

    supports_lean_scoring = False  # its forward changes the logits: score through them

    def forward(self, input_ids, attention_mask=None):  # noqa: ANN001
        return super().forward(input_ids, attention_mask) + torch.tensor([8.0, 0.0, 0.0, 0.0])


def stuck_policy() -> Stuck:
    policy = Stuck(ARCH, None)
    policy.load_state_dict(TinyPolicy.fresh(ARCH, None, seed=0).state_dict())
    return policy


def reference() -> TinyPolicy:
    return TinyPolicy.fresh(ARCH, None, seed=1).eval()


def rewards_of(completions: torch.Tensor) -> torch.Tensor:
    return (completions == 2).float().sum(-1)  # more 2s are better; the stuck policy writes none


def test_mixture_log_ratio_by_hand():
    ref, old = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -0.5])
    got = mixture_log_ratio(ref, old, 0.25)
    want = ref - torch.log(0.75 * old.exp() + 0.25 * ref.exp())
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(mixture_log_ratio(ref, old, 0.0), ref - old)
    # the weights against the mixture are bounded: p_ref / q <= 1 / eps
    extreme = mixture_log_ratio(torch.tensor([0.0]), torch.tensor([-80.0]), 0.25)
    assert extreme.item() == pytest.approx(math.log(4), abs=1e-6)


def test_defensive_path_weights_are_exact_against_the_mixture(token_policy, token_policy_b):
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=3, temperature=1.0))
    prompts = torch.tensor([[0, 2, 1]] * 8)
    flags = torch.tensor(RolloutPlan(1, 8, 8).from_reference(0, 0.25))
    out = sample_mixture(sampler, token_policy, token_policy_b, prompts, None, flags,
                         generator=torch.Generator().manual_seed(2), scorers=[token_policy_b])
    rollout = RolloutBatch(out.batch, torch.zeros(8), torch.zeros(8, dtype=torch.long), out, from_reference=flags)
    objective = DMPO(DMPOConfig(log_ratio="path"))
    exact = ExactEstimator(ExactConfig())
    with torch.no_grad():
        log_rnd = objective.prepare(rollout, ObjectiveContext(token_policy, exact, token_policy_b)).log_rnd
        old = exact.log_likelihood(token_policy, out.batch, order=out.order)
        ref = exact.log_likelihood(token_policy_b, out.batch, order=out.order)
    want = ref - torch.log(0.75 * old.exp() + 0.25 * ref.exp())
    assert torch.allclose(log_rnd, want, atol=1e-5)


def stall_rollout(policy: TinyPolicy, ref: TinyPolicy, share: float) -> RolloutBatch:
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=3, temperature=1.0))
    flags = torch.tensor(RolloutPlan(2, 8, 16).from_reference(0, share))
    with torch.no_grad():
        out = sample_mixture(sampler, policy, ref, PROMPTS, None, flags,
                             generator=torch.Generator().manual_seed(0), scorers=[ref])
    return RolloutBatch(out.batch, rewards_of(out.completion_ids), GROUPS, out, from_reference=flags)


def one_step(objective: DMPO, rollout: RolloutBatch, policy: TinyPolicy, ref: TinyPolicy):
    ctx = ObjectiveContext(policy, ExactEstimator(ExactConfig()), ref, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        weighed = objective.weigh(rollout, objective.prepare(rollout, ctx), ctx)
    policy.zero_grad()
    loss = objective.loss(rollout, weighed.state, ctx, 0).loss
    loss.backward()
    grad = torch.sqrt(sum((p.grad**2).sum() for p in policy.parameters() if p.grad is not None))
    return weighed, float(grad)


def stuck_log_prob(policy: TinyPolicy, completion: torch.Tensor) -> float:
    from ddrl.batch import SequenceBatch
    from ddrl.estimators.exact import log_likelihood_all_orders

    with torch.no_grad():
        return float(log_likelihood_all_orders(policy, SequenceBatch.from_parts(PROMPTS[:1], completion))[0])


def test_a_collapsed_policy_stalls_the_mean_baseline_and_the_default_keeps_learning():
    policy, ref = stuck_policy(), reference()
    # the mean baseline, every completion from the policy: each group is one repeated completion
    stalled = stall_rollout(policy, ref, 0.0)
    assert stalled.batch.completion_ids.unique(dim=0).tolist() == [[0, 0, 0]]
    mean = DMPO(DMPOConfig(log_ratio="path", baseline="mean", defensive=0.0, alpha=1.0))
    weighed, stuck_grad = one_step(mean, stalled, policy, ref)
    assert weighed.metrics["frac_groups_identical"] == 1.0  # detected
    # every row is the same completion and each group's advantages sum to 0: the loss's expected
    # gradient is 0 (what is left is mask noise), whatever the rewards say
    sums = weighed.state.advantages.view(2, 8).sum(-1)
    assert torch.allclose(sums, torch.zeros(2), atol=1e-6) and stuck_grad < 0.05
    # the default: a quarter of each group drawn from the reference, weights against the mixture
    default = DMPO(DMPOConfig(log_ratio="path", alpha=1.0))
    assert default.reference_share == 0.25
    rollout = stall_rollout(policy, ref, default.reference_share)
    weighed, grad = one_step(default, rollout, policy, ref)
    assert weighed.metrics["frac_groups_identical"] == 0.0 and grad > 100 * stuck_grad
    # one SGD step on that gradient moves probability off the stuck completion: the mass on every
    # other completion (0.28 % before) grows by a fifth
    stuck = torch.tensor([[0, 0, 0]])
    before = 1 - math.exp(stuck_log_prob(policy, stuck))
    with torch.no_grad():
        for p in policy.parameters():
            p -= 1e-3 * p.grad
    assert 1 - math.exp(stuck_log_prob(policy, stuck)) > 1.15 * before
    # the reference's draws, which reach higher rewards, carry the weight
    drawn = rollout.from_reference
    assert weighed.state.advantages[drawn].sum() > weighed.state.advantages[~drawn].sum()
    assert rollout.rewards[drawn].mean() > rollout.rewards[~drawn].mean()


def test_the_published_preset_is_one_flag_away_and_explicit_options_win():
    published = DMPOConfig(preset="published")
    assert {k: getattr(published, k) for k in PUBLISHED} == PUBLISHED
    assert DMPOConfig(preset="published", baseline="mean").baseline == "mean"
    robust = DMPOConfig()
    assert (robust.preset, robust.baseline, robust.defensive) == ("robust", "none", 0.25)
    # the YAML a run records loads back to the same options
    assert DMPOConfig.model_validate(published.model_dump()) == published


def test_the_defensive_share_needs_a_reference_model():
    assert DMPOConfig(reference="uniform").defensive == 0.0  # the default steps aside
    with pytest.raises(ValueError, match="reference=policy or defensive=0"):
        DMPOConfig(reference="uniform", defensive=0.2)
    with pytest.raises(ConfigError):
        from ddrl.config import build_config
        from ddrl.registry import Registry

        build_config({"objective": {"name": "dmpo", "reference": "uniform", "defensive": 0.2}}, registry=Registry(),
                     sections=["objective"])
