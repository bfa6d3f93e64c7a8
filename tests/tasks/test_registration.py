"""The task and reward names ddrl registers resolve, and each task's defaults are among them."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from ddrl.registry import Registry
from ddrl.tasks.countdown import CountdownConfig, CountdownTask
from ddrl.tasks.gsm8k import GSM8KConfig, GSM8KTask
from ddrl.tasks.math500 import Math500Config, Math500Task
from ddrl.tasks.sudoku import SudokuConfig, SudokuTask

# The entry points of ddrl's pyproject.toml for these modules.
TASKS = {
    "countdown": "ddrl.tasks.countdown:CountdownTask",
    "sudoku": "ddrl.tasks.sudoku:SudokuTask",
    "gsm8k": "ddrl.tasks.gsm8k:GSM8KTask",
    "math500": "ddrl.tasks.math500:Math500Task",
}
REWARDS = {
    "d1_strict_format": "ddrl.rewards.format:d1_strict_format",
    "d1_soft_format": "ddrl.rewards.format:d1_soft_format",
    "d1_tag_count": "ddrl.rewards.format:d1_tag_count",
    "gsm8k_correctness": "ddrl.rewards.gsm8k:gsm8k_correctness",
    "gsm8k_integer": "ddrl.rewards.gsm8k:gsm8k_integer",
    "countdown_correctness": "ddrl.rewards.countdown:countdown_correctness",
    "countdown_toy_correctness": "ddrl.rewards.countdown:countdown_toy_correctness",
    "sudoku_correctness": "ddrl.rewards.sudoku:sudoku_correctness",
    "sudoku_toy_correctness": "ddrl.rewards.sudoku:sudoku_toy_correctness",
    "math500_correctness": "ddrl.rewards.math500:math500_correctness",
    "math500_format": "ddrl.rewards.math500:math500_format",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    eps = [md.EntryPoint(n, v, "ddrl.tasks") for n, v in TASKS.items()]
    eps += [md.EntryPoint(n, v, "ddrl.rewards") for n, v in REWARDS.items()]
    return Registry(entry_points=eps)


def test_every_entry_point_loads(registry):
    assert registry.load_all() == []
    for name in TASKS:
        assert registry.get("tasks", name).Config().name == name


@pytest.mark.parametrize(
    "task, defaults",
    [
        (CountdownTask(CountdownConfig()), ["countdown_correctness"]),
        (CountdownTask(CountdownConfig(variant="toy")), ["countdown_toy_correctness"]),
        (SudokuTask(SudokuConfig()), ["sudoku_correctness"]),
        (SudokuTask(SudokuConfig(variant="toy")), ["sudoku_toy_correctness"]),
        (
            GSM8KTask(GSM8KConfig()),
            ["d1_tag_count", "d1_soft_format", "d1_strict_format", "gsm8k_integer", "gsm8k_correctness"],
        ),
        (Math500Task(Math500Config()), ["math500_correctness", "math500_format"]),
    ],
)
def test_default_rewards_resolve_through_the_registry(registry, task, defaults):
    resolved = task.reward_functions(registry)
    assert [name for name, _, _ in resolved] == defaults
    assert all(weight == 1.0 for _, _, weight in resolved)


@pytest.mark.parametrize("config_cls", [CountdownConfig, SudokuConfig, GSM8KConfig, Math500Config])
def test_task_configs_forbid_unknown_fields(config_cls):
    with pytest.raises(ValueError, match="extra"):
        config_cls(dataset_path="x")
