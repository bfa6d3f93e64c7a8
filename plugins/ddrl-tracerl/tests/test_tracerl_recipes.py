"""The LLaDA recipes carry TraceRL's published settings and validate against the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddrl.config import load_recipe
from ddrl.testing import check_recipe, recipes_by_task

RECIPES = recipes_by_task(Path(__file__).parents[1] / "recipes")  # exactly one LLaDA recipe per task
TASKS = tuple(RECIPES)


@pytest.mark.parametrize("task", TASKS)
def test_recipe_has_the_published_tracerl_settings(task):
    raw = load_recipe(RECIPES[task])
    assert raw["model"] == {"name": "llada", "path": "/path/to/LLaDA-8B-Instruct", "dtype": "bfloat16",
                            "lora": {"r": 128, "alpha": 64, "dropout": 0.05}}
    assert raw["task"]["name"] == task
    assert raw["sampler"] == {"name": "block", "max_completion_length": 256, "block_length": 32, "steps": 128,
                              "temperature": 0.9, "remasking": "low_confidence"}
    assert "estimator" not in raw  # TraceRL scores the sampler's canvases
    assert raw["objective"] == {"name": "tracerl", "shrinkage": 8, "epsilon": 0.2, "beta": 0.01,
                                "scale_rewards": True, "micro_batch_size": 8}
    assert raw["train"]["num_iterations"] > 1  # so that the clip and the KL to the old policy act


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_header_and_validation(name):
    config = check_recipe(RECIPES[name])  # the header's commands, validation, YAML round trip
    assert config.objective.name == "tracerl"
