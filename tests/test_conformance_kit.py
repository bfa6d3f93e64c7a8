"""ddrl.testing, the conformance kit: every built-in passes it, and each kind of broken component
is caught (a kit that let these through would prove nothing for a plugin)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor

from ddrl.estimators.base import MaskedViews
from ddrl.estimators.elbo import ElboEstimator
from ddrl.objectives.base import ObjectiveOutput
from ddrl.objectives.dmpo import DMPO
from ddrl.objectives.sft import SFT
from ddrl.registry import Registry
from ddrl.rows import RowState
from ddrl.samplers.ancestral import AncestralSampler
from ddrl.samplers.block import BlockSampler
from ddrl.testing import (
    ConformanceError,
    check_estimator,
    check_model,
    check_objective,
    check_reward,
    check_sampler,
    check_task,
)

SAMPLERS = {
    "block": {"max_completion_length": 6, "block_length": 3, "steps": 6, "temperature": 1.0},
    "block-exact-path": {"max_completion_length": 6, "block_length": 3, "steps": 6, "temperature": 1.0,
                         "remasking": "random"},
    "fast": {"max_completion_length": 6, "block_length": 3, "steps": 6, "temperature": 1.0, "threshold": 0.5},
    "ancestral": {"max_completion_length": 6, "temperature": 1.0},
}


@pytest.mark.parametrize("name", ["dmpo", "diffu_grpo", "coupled_grpo", "sft", "log_variance", "rerf"])
def test_every_builtin_objective_passes_the_kit(name):
    metrics = check_objective(name, distribution="ddrl")
    assert metrics  # every objective logs something


def test_objective_options_and_components_can_be_chosen():
    metrics = check_objective(
        "dmpo", options={"log_ratio": "path", "baseline": "unbiased", "alpha": 0.5},
        estimator={"name": "elbo", "num_samples": 2}, sampler={"name": "ancestral", "max_completion_length": 4},
    )
    assert 0 < metrics["ess"] <= 1


@pytest.mark.parametrize("name", ["elbo", "exact", "one_step", "coupled"])
def test_every_builtin_estimator_passes_the_kit(name):
    check_estimator(name, distribution="ddrl")


@pytest.mark.parametrize("variant", sorted(SAMPLERS))
def test_every_builtin_sampler_passes_the_kit(variant):
    check_sampler(variant.split("-")[0], distribution="ddrl", options=SAMPLERS[variant])


def test_the_tiny_model_and_the_builtin_tasks_pass_the_kit():
    check_model("tiny", distribution="ddrl", options={"charset": "ab", "architecture": {
        "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32, "absolute_positions": True}})
    for task, options in (("countdown", {"variant": "toy"}), ("sudoku", {"variant": "toy"})):
        check_task(task, distribution="ddrl", options=options)
    assert check_reward("countdown_toy_correctness", {"numbers": [[1, 2]] * 2, "target": [3, 3]}, ["1+2", "9"]) == [1.0, 0.1]


# ------------------------------------------------------------------------------------------------
# the kit has teeth


def registry_with(group: str, name: str, obj: object) -> Registry:
    registry = Registry()
    registry.register(group, name, obj)
    return registry


class UnseededSFT(SFT):
    """Draws its loss masks from the global generator instead of ``ctx.generator``."""

    def loss(self, rollout, state, ctx, iteration):
        return super().loss(rollout, state, replace(ctx, generator=None), iteration)


class DetachedSFT(SFT):
    def loss(self, rollout, state, ctx, iteration):
        out = super().loss(rollout, state, ctx, iteration)
        return ObjectiveOutput(out.loss.detach().requires_grad_(), out.metrics)


@dataclass
class TupleState(RowState):
    per_row: tuple  # a tuple is not cut into rows: every chunk would see the first chunk's values


class TupleStateSFT(SFT):
    def prepare(self, rollout, ctx):
        return TupleState((rollout.rewards,))


class NaNMetricSFT(SFT):
    def loss(self, rollout, state, ctx, iteration):
        out = super().loss(rollout, state, ctx, iteration)
        return ObjectiveOutput(out.loss, {"sft_loss": float("nan")})


@pytest.mark.parametrize(
    "cls, message",
    [
        (UnseededSFT, "the same seeds gave different losses"),
        (DetachedSFT, "no gradient"),
        (TupleStateSFT, r"TupleState.per_row\[0\] has shape \[4\] in a state of 8 rows"),
        (NaNMetricSFT, "metric 'sft_loss' = nan is not a finite float"),
    ],
)
def test_a_broken_objective_is_caught(cls, message):
    with pytest.raises(ConformanceError, match=message):
        check_objective("broken", registry=registry_with("objectives", "broken", cls))


def test_a_component_from_another_distribution_than_claimed_is_caught():
    with pytest.raises(ConformanceError, match="registered by 'ddrl"):
        check_objective("dmpo", distribution="my-package")
    with pytest.raises(ConformanceError, match="not registered"):
        check_objective("dmpoo")


class LeakyElbo(ElboEstimator):
    """Scores every completion position, ignoring the batch's completion_mask."""

    def draw(self, batch, generator=None, order=None):
        views = super().draw(batch.with_completion_mask(torch.ones_like(batch.completion_mask)), generator, order)
        return views


def test_an_estimator_that_scores_uncounted_positions_is_caught():
    with pytest.raises(ConformanceError, match="outside the batch's completion_mask"):
        check_estimator("leaky", registry=registry_with("estimators", "leaky", LeakyElbo))


class UnseededBlock(BlockSampler):
    def sample(self, policy, prompt_ids, prompt_mask=None, *, generator=None, scorers=()):
        return super().sample(policy, prompt_ids, prompt_mask, generator=None, scorers=scorers)


class WrongPathAncestral(AncestralSampler):
    """Claims exact path likelihoods but records them at half their value."""

    def sample(self, policy, prompt_ids, prompt_mask=None, *, generator=None, scorers=()):
        out = super().sample(policy, prompt_ids, prompt_mask, generator=generator, scorers=scorers)
        return replace(out, token_logprobs=out.token_logprobs / 2)


def test_a_sampler_that_ignores_its_generator_or_misrecords_its_path_is_caught():
    with pytest.raises(ConformanceError, match="the same seed gave other completions"):
        check_sampler("unseeded", options=SAMPLERS["block"], registry=registry_with("samplers", "unseeded", UnseededBlock))
    with pytest.raises(ConformanceError, match="do not sum to the path likelihood"):
        check_sampler("wrong_path", options=SAMPLERS["ancestral"],
                      registry=registry_with("samplers", "wrong_path", WrongPathAncestral))


def test_a_reward_with_one_value_too_few_is_caught():
    def short(prompts, completions, **columns):
        return [1.0] * (len(completions) - 1)

    with pytest.raises(ConformanceError, match="returned 1 values for 2 completions"):
        check_reward("short", {}, ["a", "b"], registry=registry_with("rewards", "short", short))


def test_kit_states_cover_views_lists_and_tensors():
    """What the round-trip check compares: a state with views and a list of tensors (GRPO's)."""
    g = torch.Generator().manual_seed(0)
    views = MaskedViews(torch.ones(4, 1, 2, dtype=torch.bool), torch.ones(4, 1, 2, dtype=torch.bool), torch.rand(4, 1, 2, generator=g))

    @dataclass
    class State(RowState):
        views: list[MaskedViews]
        old: Tensor

    state = State([views, views], torch.arange(4.0))
    joined = State.cat([state.index(slice(0, 1)), state.index(slice(1, 4))])
    assert torch.equal(joined.views[1].weights, views.weights) and torch.equal(joined.old, state.old)
    assert isinstance(DMPO.Config(), DMPO.Config)  # the kit builds components from their Config


def test_a_recipe_folder_must_hold_exactly_one_recipe_per_task(tmp_path):
    from ddrl.testing import recipes_by_task

    for task in ("gsm8k", "math500", "countdown"):
        (tmp_path / f"llada_{task}.yaml").write_text("{}\n")
    with pytest.raises(ConformanceError, match="expected one per task"):
        recipes_by_task(tmp_path)
    (tmp_path / "llada_sudoku.yaml").write_text("{}\n")
    assert list(recipes_by_task(tmp_path)) == ["gsm8k", "math500", "countdown", "sudoku"]


class WrongLean(__import__("ddrl.models.tiny", fromlist=["TinyPolicy"]).TinyPolicy):
    """Its lean scoring path is off by a constant."""

    def forward(self, input_ids, attention_mask=None, *, scored=None, targets=None):  # noqa: ANN001
        out = super().forward(input_ids, attention_mask, scored=scored, targets=targets)
        return out if scored is None else out - 0.5


def test_a_model_whose_lean_scoring_disagrees_with_its_logits_is_caught():
    options = {"charset": "ab", "architecture": {"d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32}}
    with pytest.raises(ConformanceError, match="lean scoring differs"):
        check_model("wrong_lean", options=options, registry=registry_with("models", "wrong_lean", WrongLean))
