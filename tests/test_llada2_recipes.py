"""The LLaDA2.1-mini recipes (recipes/llada2/): every one validates against the registry, uses the
block-diffusion sampler with a cache llada2 supports and the block ELBO at the model's block size, and
one runs a training step on the tiny published-layout checkpoint of ``tests/hf_fixtures_llada2.py``."""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.models.llada2 import DEFAULT_BLOCK_SIZE, LLaDA2Policy
from ddrl.registry import Registry
from ddrl.testing import check_recipe
from tests.hf_fixtures_llada2 import write_llada2

ROOT = Path(__file__).parent.parent
RECIPES = sorted((ROOT / "recipes" / "llada2").glob("*.yaml"))
OBJECTIVES = ("dmpo", "diffu_grpo", "coupled_grpo")
TASKS = ("countdown", "gsm8k", "math500", "sudoku")
CLI_ENV = {"COLUMNS": "400", "NO_COLOR": "1"}


def test_three_objectives_times_four_tasks_shipped_in_the_package():
    assert {p.name for p in RECIPES} == {f"{o}_{t}.yaml" for o in OBJECTIVES for t in TASKS}
    for p in RECIPES:
        assert importlib.resources.files("ddrl.recipes").joinpath(f"llada2/{p.name}").is_file()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_with_block_diffusion_settings(path):
    config = check_recipe(path, Registry())
    model, sampler, estimator = config.model, config.sampler, config.estimator
    assert model.name == "llada2" and model.dtype == "bfloat16"
    assert list(model.lora.target_modules) == list(LLaDA2Policy.default_lora_targets)
    assert config.train.bf16 and config.train.gradient_checkpointing
    assert sampler.name == "block_diffusion"
    assert sampler.cache == "exact" and LLaDA2Policy.supports_block_cache  # committed blocks cached exactly
    assert sampler.block_length in (None, DEFAULT_BLOCK_SIZE)
    assert estimator.name == "block_elbo" and estimator.block_size == DEFAULT_BLOCK_SIZE
    # the training settings of the LLaDA-8B counterpart carry over
    twin = check_recipe(ROOT / "recipes" / "llada" / path.name, Registry())
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "num_iterations",
                "learning_rate", "max_grad_norm", "weight_decay"):
        assert getattr(config.train, key) == getattr(twin.train, key), key
    assert config.objective == twin.objective
    assert model.lora.r == twin.model.lora.r
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("configs/accelerate/fsdp2_8gpu.yaml" in line for line in header)


def test_dmpo_countdown_runs_one_step_on_the_tiny_checkpoint(tmp_path):
    checkpoint = tmp_path / "llada2"
    write_llada2(checkpoint, block_size=4)  # the published layout, blocks of 4 (config.json's block_size)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--config", str(ROOT / "recipes" / "llada2" / "dmpo_countdown.yaml"), "--model-path", str(checkpoint),
        "--set", "model.dtype=float32", "--set", "model.lora.r=4", "--set", "model.lora.alpha=8",
        "--set", "sampler.max_completion_length=8", "--set", "estimator.block_size=4", "--set", "estimator.num_samples=2",
        "--set", "objective.loss_replicates=2", "--set", "train.max_prompt_length=48",
        "--set", "train.max_steps=1", "--set", "train.per_device_train_batch_size=2",
        "--set", "train.gradient_accumulation_steps=1", "--set", "train.num_generations=2",
        "--set", "train.num_iterations=1", "--set", "train.save_steps=1", "--set", "train.bf16=false",
        "--set", "logging.progress=false", "--set", "logging.report_to=[jsonl]", "--output-dir", str(run),
    ], env=CLI_ENV)
    assert result.exit_code == 0, result.output
    assert "done: 1 steps" in result.output or "done: 1 step" in result.output, result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert (run / "final" / "config.json").is_file()
