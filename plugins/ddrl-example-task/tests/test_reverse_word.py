"""The example plugin, as ddrl sees it once the distribution is installed.

Nothing is installed here: CI (``bash .ci/run``) installs every package under plugins/ first. Run
alone with ``pip install -e plugins/ddrl-example-task && python -m pytest plugins/ddrl-example-task``.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest

pytest.importorskip("ddrl_example_task", reason="not installed: pip install -e plugins/ddrl-example-task")

from ddrl.registry import Registry
from ddrl.testing import build, check_listed, check_reward, check_task, train_briefly
from ddrl_example_task.task import ReverseWordTask

DIST = "ddrl-example-task"


def test_registry_finds_the_task_and_the_reward_of_this_distribution():
    registry = Registry()
    assert registry.get("tasks", "reverse_word") is ReverseWordTask
    assert registry.origin("tasks", "reverse_word") == f"{DIST} {version(DIST)}"
    assert registry.origin("rewards", "reverse_word_match") == f"{DIST} {version(DIST)}"
    assert [p for p in registry.check_all() if p.distribution == DIST] == []


def test_the_task_and_its_reward_keep_their_contracts():
    check_task("reverse_word", distribution=DIST)
    check_listed("tasks", "reverse_word", DIST, "ddrl_example_task.task:ReverseWordTask")


def test_reward_is_the_share_of_letters_in_place():
    # gold "cba": "cba" all 3 right; " cbx" (stripped) 2 of 3; "abc" only the middle b
    values = check_reward("reverse_word_match", {"answer": ["cba"] * 3}, ["cba", " cbx", "abc"], distribution=DIST)
    assert values == [1.0, 2 / 3, 1 / 3]


def test_splits_come_from_the_seed_and_differ(registry):
    task = build(registry, "tasks", "reverse_word", num_test=5)
    test = task.split("test")
    assert len(test) == 5 and test == task.split("test")
    assert [e.question for e in test] != [e.question for e in task.split("train")[:5]]
    for example in test:
        assert example.answer == example.question[::-1]
        assert task.score(example, f" {example.answer}\n") == {"accuracy": 1.0}
        assert task.format_prompt(example) == f"reverse {example.question}:"


@pytest.mark.slow
def test_ddrl_train_runs_two_steps_on_the_plugin_task(tmp_path):
    _, config = train_briefly(tmp_path, "--task", "reverse_word", "--model", "tiny")
    assert config["task"]["name"] == "reverse_word"
