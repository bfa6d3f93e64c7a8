"""MDNS's comparison losses against brute force: `log_variance` is the gradient of the variance of
the path log-ratios, `rerf` the gradient of the reverse KL between path measures (checked on an
enumeration of every (order, completion) pair), and DMPO's uniform reference."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.config import ConfigError, build_config
from ddrl.estimators.exact import ExactConfig, ExactEstimator
from ddrl.models.tiny import TinyPolicy
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.objectives.dmpo import DMPO, DMPOConfig
from ddrl.objectives.log_variance import LogVariance, LogVarianceConfig
from ddrl.objectives.rerf import RERF, RERFConfig
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.samplers.base import SampleOutput
from ddrl.training.trainer import Trainer

PROMPT = [0, 2]


def params(policy: torch.nn.Module) -> list[Tensor]:
    return [p for p in policy.parameters() if p.requires_grad]


def grads(loss: Tensor, policy: torch.nn.Module) -> Tensor:
    """All parameter gradients as one flat vector (autograd.grad: fixtures keep .grad empty)."""
    gs = torch.autograd.grad(loss, params(policy), allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params(policy))])


def path_log_prob(policy: TinyPolicy, prompt: list[int], x: list[int], order: list[int]) -> Tensor:
    """log p_theta(x; sigma), with gradient, by revealing one position at a time (brute force)."""
    canvas = prompt + [policy.mask_token_id] * len(x)
    total = torch.zeros((), dtype=torch.float64)
    for pos in order:
        logits = policy.logits(torch.tensor([canvas]))[0, len(prompt) + pos]
        total = total + torch.log_softmax(logits.double(), -1)[x[pos]]
        canvas[len(prompt) + pos] = x[pos]
    return total


def rollout_of(policy: TinyPolicy, rows: int, length: int, seed: int, groups: int = 1) -> RolloutBatch:
    """Ancestral samples after PROMPT, rewards = an arbitrary function of the tokens."""
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=length, temperature=1.0))
    prompt = torch.tensor(PROMPT).expand(rows, -1).clone()
    out = sampler.sample(policy, prompt, generator=torch.Generator().manual_seed(seed))
    x = out.completion_ids.double()
    rewards = (1.3 * x[:, 0] - 0.7 * (x[:, 1] == x[:, -1]).double() + 0.4 * x.sum(-1)).float()
    group_ids = torch.arange(rows) * groups // rows
    return RolloutBatch(out.batch, rewards, group_ids, out)


def run_phases(objective, rollout: RolloutBatch, old: TinyPolicy, current: TinyPolicy, chunks: int = 2,
               iteration: int = 0) -> Tensor:
    """prepare (per chunk) -> weigh -> begin_iteration -> loss (per chunk, summed), as the trainer does."""
    est = ExactEstimator(ExactConfig())
    size = len(rollout) // chunks
    parts = [slice(i * size, (i + 1) * size) for i in range(chunks)]
    with torch.no_grad():
        states = [objective.prepare(rollout.index(s), ObjectiveContext(old, est)) for s in parts]
        state = objective.weigh(rollout, type(states[0]).cat(states), ObjectiveContext(old, est)).state
        state = objective.begin_iteration(rollout, state, ObjectiveContext(current, est), iteration)
    return sum(
        objective.loss(rollout.index(s), state.index(s), ObjectiveContext(current, est), iteration).loss
        for s in parts
    )


def brute_f(policy: TinyPolicy, rollout: RolloutBatch, alpha: float = 1.0) -> Tensor:
    """``[B]`` F = log p_theta(x; sigma) - r / alpha along each row's recorded order (uniform reference)."""
    rows = [
        path_log_prob(policy, PROMPT, x.tolist(), o.tolist())
        for x, o in zip(rollout.batch.completion_ids, rollout.sample.order)
    ]
    return torch.stack(rows) - rollout.rewards.double() / alpha


# ------------------------------------------------------------------------------------------------
# log_variance


@pytest.mark.parametrize("groups", [1, 2])
def test_log_variance_is_the_variance_of_path_log_ratios_value_and_gradient(token_policy, groups):
    policy = copy.deepcopy(token_policy)
    rollout = rollout_of(policy, 8, 3, seed=1, groups=groups)
    loss = run_phases(LogVariance(LogVarianceConfig()), rollout, policy, policy)
    f = brute_f(policy, rollout)
    expected = sum(f[rollout.group_ids == g].var(unbiased=False) for g in range(groups))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    assert torch.allclose(grads(loss, policy), grads(expected, policy).float(), atol=1e-5, rtol=1e-4)


def test_log_variance_recentres_at_the_current_weights_after_the_first_iteration(token_policy, token_policy_b):
    old, current = copy.deepcopy(token_policy), copy.deepcopy(token_policy_b)
    rollout = rollout_of(old, 8, 3, seed=2)
    objective = LogVariance(LogVarianceConfig(alpha=0.5))
    loss = run_phases(objective, rollout, old, current, iteration=1)
    f = brute_f(current, rollout, alpha=0.5)  # samples from old, F under the current weights
    expected = f.var(unbiased=False)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    # float32 loss vs float64 brute force: multi-threaded reductions differ at ~1e-5 relative
    assert torch.allclose(grads(loss, current), grads(expected, current).float(), atol=1e-4, rtol=1e-3)


def test_log_variance_is_zero_when_the_model_is_the_target_along_every_path(token_policy):
    policy = copy.deepcopy(token_policy)
    rollout = rollout_of(policy, 6, 2, seed=3)
    # rewards equal to the model's own path log-likelihood (+ a constant): F is constant
    rollout.rewards = (rollout.sample.path_logprob + 2.5).float()
    assert float(run_phases(LogVariance(LogVarianceConfig()), rollout, policy, policy).detach()) < 1e-8


# ------------------------------------------------------------------------------------------------
# rerf


def every_path(num_tokens: int, length: int) -> tuple[Tensor, Tensor]:
    """All (completion, order) pairs: ``x [N, L]``, ``order [N, L]`` with N = V^L * L!."""
    xs, orders = [], []
    for x in itertools.product(range(num_tokens), repeat=length):
        for order in itertools.permutations(range(length)):
            xs.append(x)
            orders.append(order)
    return torch.tensor(xs), torch.tensor(orders)


def enumerated_rollout(policy: TinyPolicy, alpha: float) -> tuple[RolloutBatch, Tensor]:
    """Every path once, recorded as if drawn uniformly (p_old = 1/N per path); and the rewards."""
    x, order = every_path(3, 2)
    n = x.shape[0]
    rewards = (0.8 * x[:, 0] - 1.1 * (x[:, 0] == x[:, 1]).long() + 0.3 * x[:, 1]).float()
    unmask_step = torch.empty_like(order).scatter_(1, order, torch.arange(2).expand(n, 2).contiguous())
    token_lp = torch.zeros((n, 2))
    token_lp[:, 0] = -math.log(n)  # the sum is what counts: log p_old(path) = log 1/N
    batch = SequenceBatch.from_parts(torch.tensor(PROMPT).expand(n, -1).clone(), x)
    sample = SampleOutput(batch, unmask_step, token_lp)
    return RolloutBatch(batch, rewards, torch.zeros(n, dtype=torch.long), sample), rewards


def test_rerf_gradient_is_the_exact_gradient_of_the_path_reverse_kl(token_policy, token_policy_b):
    old, current = copy.deepcopy(token_policy), copy.deepcopy(token_policy_b)
    alpha = 0.7
    rollout, rewards = enumerated_rollout(old, alpha)
    n = len(rollout)
    loss = run_phases(RERF(RERFConfig(alpha=alpha, baseline="none")), rollout, old, current, chunks=3, iteration=1)
    # KL(p_theta(sigma, x) || p*(x) u(sigma)) up to a constant: sum over paths of
    # p(sigma) p_theta(x; sigma) (log p_theta(x; sigma) - r / alpha), p(sigma) = 1/2
    lp = torch.stack([path_log_prob(current, PROMPT, x.tolist(), o.tolist())
                      for x, o in zip(rollout.batch.completion_ids, rollout.sample.order)])
    kl = (0.5 * lp.exp() * (lp - rewards.double() / alpha)).sum()
    # rho = p_theta / (1/N), mean over N rows: the surrogate sums p_theta F grad F = 2 grad KL
    assert torch.allclose(grads(loss, current), 2 * grads(kl, current).float(), atol=1e-5, rtol=1e-4)
    assert n == 18


def test_rerf_with_the_mean_baseline_is_half_the_log_variance_gradient_on_policy(token_policy):
    policy = copy.deepcopy(token_policy)
    rollout = rollout_of(policy, 8, 3, seed=4, groups=2)
    rerf = run_phases(RERF(RERFConfig(baseline="mean")), rollout, policy, policy)
    log_var = run_phases(LogVariance(LogVarianceConfig()), rollout, policy, policy)
    assert torch.allclose(grads(rerf, policy), 0.5 * grads(log_var, policy), atol=1e-5, rtol=1e-4)


def test_rerf_leave_one_out_baseline_excludes_the_row(token_policy):
    policy = copy.deepcopy(token_policy)
    rollout = rollout_of(policy, 4, 2, seed=5)
    objective = RERF(RERFConfig())
    est = ExactEstimator(ExactConfig())
    with torch.no_grad():
        weighed = objective.weigh(rollout, objective.prepare(rollout, ObjectiveContext(policy, est)),
                                  ObjectiveContext(policy, est))
    f = (rollout.sample.path_logprob.double() - rollout.rewards.double())
    assert torch.allclose(weighed.state.centre, (f.sum() - f) / 3, atol=1e-5)
    assert 0 < weighed.metrics["ess"] <= 1


# ------------------------------------------------------------------------------------------------
# wiring


def test_path_objectives_need_the_recorded_order_and_uniform_reference_needs_no_model():
    for objective in (LogVariance(LogVarianceConfig()), RERF(RERFConfig())):
        assert not objective.needs_reference
        assert {"exact_path", "token_logprobs"} <= objective.needs_sampler
        assert objective.needs_estimator == frozenset({"exact_path"}) and objective.preferred_estimator == "exact"
    with_ref = LogVariance(LogVarianceConfig(reference="policy"))
    assert with_ref.needs_reference and "scorer_logprobs" in with_ref.needs_sampler
    dmpo = DMPO(DMPOConfig(log_ratio="path", reference="uniform"))
    assert not dmpo.needs_reference and dmpo.needs_sampler == frozenset({"exact_path", "token_logprobs", "unmask_step"})


def ising_recipe(tmp_path, objective: dict, sampler: str = "ancestral") -> dict:
    sampler_cfg = {"name": "ancestral", "max_completion_length": 4, "temperature": 1.0}
    if sampler == "block":
        sampler_cfg = {"name": "block", "max_completion_length": 4, "block_length": 4, "steps": 4, "temperature": 1.0}
    return {
        "model": {"name": "tiny", "charset": None,
                  "architecture": {"vocab_size": 3, "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32}},
        "task": {"name": "ising", "L": 2, "beta": 0.4, "eval_samples": 64},
        "sampler": sampler_cfg,
        "estimator": {"name": "exact"},
        "objective": objective,
        "train": {"output_dir": str(tmp_path / objective["name"]), "max_steps": 2, "per_device_train_batch_size": 8,
                  "num_generations": 8, "num_iterations": 2, "save_steps": 2, "learning_rate": 1e-3},
        "eval": {"during_training": True},
        "logging": {"report_to": ["jsonl"], "progress": False},
    }


@pytest.mark.parametrize("objective", ["log_variance", "rerf"])
def test_path_objectives_train_on_the_ising_task(tmp_path, objective):
    result = Trainer(build_config(ising_recipe(tmp_path, {"name": objective}))).train()
    steps = [m for m in result.metrics if "loss" in m]
    assert len(steps) == 2 and all(math.isfinite(m["loss"]) and 0 < m["ess"] <= 1 for m in steps)
    assert result.heldout_metric == "ess" and 0 < result.heldout_after <= 1


def test_path_objectives_refuse_a_sampler_without_the_path(tmp_path):
    with pytest.raises(ConfigError, match="ancestral"):
        Trainer(build_config(ising_recipe(tmp_path, {"name": "log_variance"}, sampler="block")))
