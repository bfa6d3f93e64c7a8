"""ddrl's conformance kit: the checks a plugin author runs against their own components.

ddrl's built-ins and its plugin packages are tested with the same functions::

    from ddrl.testing import check_listed, check_objective, train_briefly

    def test_my_objective_keeps_the_contract():
        check_objective("my_objective", distribution="my-package")

    def test_ddrl_lists_it():
        check_listed("objectives", "my_objective", "my-package", "my_package.objective:MyObjective")

    def test_two_training_steps(tmp_path):
        metrics, config = train_briefly(tmp_path, "--objective", "my_objective", "--model", "tiny")

Building blocks for exact tests of one's own (``build``, ``text_policy``, ``generator``, ``twin``,
``trainable``, ``sampled_rollout``, ``CanvasRecorder``) come from ``ddrl.testing.components``; docs/plugins.md shows a
whole plugin test suite.
"""

from ddrl.testing.components import CanvasRecorder, build, generator, sampled_rollout, text_policy, trainable, twin
from ddrl.testing.conformance import (
    ConformanceError,
    check_estimator,
    check_model,
    check_objective,
    check_registered,
    check_reward,
    check_sampler,
    check_task,
)
from ddrl.testing.runs import check_listed, check_recipe, recipes_by_task, train_briefly

__all__ = [
    "CanvasRecorder",
    "ConformanceError",
    "build",
    "check_estimator",
    "check_listed",
    "check_model",
    "check_objective",
    "check_recipe",
    "check_registered",
    "check_reward",
    "check_sampler",
    "check_task",
    "generator",
    "recipes_by_task",
    "sampled_rollout",
    "text_policy",
    "train_briefly",
    "trainable",
    "twin",
]
