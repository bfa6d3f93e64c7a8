"""MATH500: test-only loading, math-verify correctness and d1's boxed-in-answer format reward."""

from __future__ import annotations

import pytest

from ddrl.config import ConfigError
from ddrl.rewards.math500 import math500_correctness, math500_format
from ddrl.tasks.math500 import Math500Config, Math500Task


@pytest.fixture
def task(fixtures) -> Math500Task:
    return Math500Task(Math500Config(data_path=str(fixtures / "math500")))


def test_loads_the_test_split_with_gold_answers(task):
    examples = task.split("test")
    assert [e.answer for e in examples] == [
        "\\frac{7}{8}", "7", "4\\sqrt{3}", "x^2+4x+4", "-3, 3", "(-2, 2)", "120^\\circ",
    ]  # the last record has no answer field: taken from its solution's box
    assert examples[0].id == "fixture/prealgebra/1.json"


def test_there_is_no_train_split(task):
    with pytest.raises(ConfigError, match="no split 'train'"):
        task.split("train")


def test_absent_hf_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="HuggingFaceH4/MATH-500"):
        Math500Task(Math500Config(cache_dir=str(tmp_path))).load("test")


@pytest.mark.parametrize(
    "completion, gold, reward",
    [
        ("<answer>\\boxed{\\frac{7}{8}}</answer>", "\\frac{7}{8}", 2.0),
        ("<answer>\\boxed{\\dfrac{7}{8}}</answer>", "\\frac{7}{8}", 2.0),
        ("<answer>\\boxed{0.875}</answer>", "\\frac{7}{8}", 2.0),
        ("\\boxed{1} then finally \\boxed{7}", "7", 2.0),  # the last box counts
        ("\\boxed{7} then finally \\boxed{1}", "7", 0.0),
        ("<answer>\\boxed{x = 7}</answer>", "7", 2.0),
        ("<answer>\\boxed{\\sqrt{48}}</answer>", "4\\sqrt{3}", 2.0),
        ("<answer>\\boxed{(x+2)^2}</answer>", "x^2+4x+4", 2.0),
        ("<answer>\\boxed{3, -3}</answer>", "-3, 3", 2.0),
        ("<answer>\\boxed{\\left(-2, 2\\right)}</answer>", "(-2, 2)", 2.0),
        ("<answer>\\boxed{[-2, 2]}</answer>", "(-2, 2)", 0.0),
        ("<answer>\\boxed{120}</answer>", "120^\\circ", 2.0),
        ("<answer>7</answer>", "7", 0.0),  # no box: no credit
        ("<answer>\\boxed{7</answer>", "7", 0.0),  # unclosed box
        ("", "7", 0.0),
    ],
)
def test_math500_correctness(completion, gold, reward):
    assert math500_correctness(["p"], [completion], answer=[gold]) == [reward]


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("<reasoning>\nr\n</reasoning>\n<answer>\n\\boxed{7}\n</answer>\n", 1.0),
        ("<answer>7</answer>", 0.75),
        ("\\boxed{7}", 0.25),  # no answer tags: no answer to hold the box
        ("nothing", 0.25),
        ("<answer>\\boxed{1}</answer> <answer>7</answer>", 0.75),  # the last answer counts
        ("<answer>\\boxed{7}", 0.25),  # unclosed
    ],
)
def test_math500_format(completion, reward):
    assert math500_format(["p"], [completion], answer=["7"]) == [reward]


def test_score_uses_the_last_box_or_the_answer_tags(task):
    example = task.split("test")[0]
    assert task.score(example, "<answer>\\boxed{7/8}</answer>") == {"accuracy": 1.0, "answered": 1.0}
    assert task.score(example, "<answer>\\frac{7}{8}</answer>") == {"accuracy": 1.0, "answered": 1.0}
    assert task.score(example, "so \\boxed{\\frac{7}{8}}") == {"accuracy": 1.0, "answered": 0.0}
    assert task.score(example, "<answer>\\boxed{1/8}</answer>") == {"accuracy": 0.0, "answered": 1.0}


def test_prompt_asks_for_a_box_inside_the_answer_tags(task):
    example = task.split("test")[1]
    prompt = task.format_prompt(example)
    assert prompt.startswith("Respond in the following format:")
    assert "\\boxed{}" in prompt and prompt.endswith(example.question)
