"""The LLaDA recipes carry TraceRL's published settings and validate against the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddrl.config import build_config, load_recipe
from ddrl.registry import Registry

RECIPES = {p.stem: p for p in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))}
TASKS = ("gsm8k", "math500", "countdown", "sudoku")


def test_there_is_one_llada_recipe_per_task():
    assert sorted(RECIPES) == sorted(f"llada_{t}" for t in TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_recipe_has_the_published_tracerl_settings(task):
    raw = load_recipe(RECIPES[f"llada_{task}"])
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
    text = RECIPES[name].read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert len([h for h in header if re.match(r"^#\s+ddrl train\b", h)]) >= 2
    registry = Registry()
    if "llada" not in registry.names("models"):
        pytest.skip("the llada model is not registered in this ddrl")
    config = build_config(load_recipe(RECIPES[name]), registry=registry)
    assert config.objective.name == "tracerl"
