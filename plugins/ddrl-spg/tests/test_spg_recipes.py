"""The LLaDA recipes carry the published hyper-parameters and validate against the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddrl.config import load_recipe
from ddrl.testing import check_recipe, recipes_by_task

RECIPES = recipes_by_task(Path(__file__).parents[1] / "recipes")  # exactly one LLaDA recipe per task
TASKS = tuple(RECIPES)


@pytest.mark.parametrize("task", TASKS)
def test_recipe_has_the_published_hyper_parameters(task):
    raw = load_recipe(RECIPES[task])
    assert raw["model"] == {"name": "llada", "path": "/path/to/LLaDA-8B-Instruct", "dtype": "bfloat16",
                            "lora": {"r": 128, "alpha": 64, "dropout": 0.05}}
    assert raw["task"]["name"] == task
    assert raw["sampler"] == {"name": "block", "max_completion_length": 256, "block_length": 32, "steps": 128,
                              "temperature": 0.9, "remasking": "low_confidence"}
    assert raw["estimator"] == {"name": "blockwise", "num_samples": 2, "block_length": 32, "p_mask_prompt": 0.15}
    beta = 1.0 if task == "sudoku" else 1.5
    assert raw["objective"] == {"name": "spg", "negative_bound": "mix", "mix_weight": 0.5, "eubo_beta": beta}
    train = raw["train"]
    assert train["learning_rate"] == 3e-6 and train["num_generations"] == 6 and train["num_iterations"] == 4
    assert train["per_device_train_batch_size"] == 6 and train["gradient_accumulation_steps"] == 2


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_header_and_validation(name):
    config = check_recipe(RECIPES[name])  # the header's commands, validation, YAML round trip
    assert config.objective.name == "spg" and config.estimator.name == "blockwise"
