"""Countdown: generated and loaded puzzles, prompts, the 1.0 / 0.1 / 0 reward, accuracy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ddrl.config import ConfigError
from ddrl.models.char_tokenizer import DEFAULT_CHARSET
from ddrl.rewards.countdown import countdown_correctness, countdown_toy_correctness
from ddrl.tasks.arithmetic import solves
from ddrl.tasks.countdown import CountdownConfig, CountdownTask


def make(**options) -> CountdownTask:
    return CountdownTask(CountdownConfig(**{"num_generated_train": 64, "num_generated_test": 32, **options}))


def group(example) -> tuple:
    return tuple(sorted(example.columns["numbers"])), example.columns["target"]


@pytest.mark.parametrize("variant", ["d1", "toy"])
@pytest.mark.parametrize("num_numbers", [3, 4])
def test_generated_puzzles_are_solvable_by_their_stored_solution(variant, num_numbers):
    task = make(variant=variant, num_numbers=num_numbers)
    for example in task.load("train") + task.load("test"):
        numbers, target = example.columns["numbers"], example.columns["target"]
        assert len(numbers) == num_numbers
        assert solves(example.answer, numbers, target)


def test_generation_is_deterministic_in_the_seed():
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    assert a.load("train") == b.load("train")
    assert a.load("test") == b.load("test")
    assert a.load("test") != c.load("test")


def test_train_and_test_never_share_a_puzzle_in_any_order():
    task = CountdownTask(CountdownConfig(variant="toy"))  # defaults: 2000 train, 256 test
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (2000, 256)
    assert not {group(e) for e in train} & {group(e) for e in test}
    assert len({e.question for e in train}) == 2000  # distinct prompts


def test_test_split_does_not_depend_on_the_train_size():
    assert make(num_generated_train=10).load("test") == make(num_generated_train=50).load("test")


def test_toy_prompts_and_answers_fit_the_tiny_model():
    task = CountdownTask(CountdownConfig(variant="toy", num_numbers=4, num_generated_train=500))
    for example in task.load("train"):
        prompt = task.format_prompt(example)
        assert prompt == f"{','.join(map(str, example.columns['numbers']))}:{example.columns['target']}="
        assert len(prompt) < 24 and len(example.answer) < 16
        assert set(prompt + example.answer) <= set(DEFAULT_CHARSET)
        assert all(1 <= n <= 9 for n in example.columns["numbers"])


def test_d1_prompt_states_numbers_and_target_after_the_format_block():
    task = make()
    example = task.load("test")[0]
    prompt = task.format_prompt(example)
    assert prompt.startswith("Respond in the following format:\n<reasoning>\n")
    assert prompt.endswith(f"Numbers: {example.columns['numbers']}\nTarget: {example.columns['target']}")


def test_loads_nums_and_numbers_records_from_a_directory(fixtures):
    task = make(data_path=str(fixtures / "countdown"))
    train, test = task.load("train"), task.load("test")
    assert [e.columns for e in train[:2]] == [
        {"numbers": [3, 5, 7], "target": 16},
        {"numbers": [2, 8, 9], "target": 25},
    ]
    assert train[0].answer == "3*7-5"
    assert train[3].answer is None  # 1, 2, 3 cannot make 100: kept, without a solution
    assert train[4].columns["numbers"] == [25, 4, 3, 9]
    assert test[1].columns == {"numbers": [12, 3, 4], "target": 16}


def test_loads_d1_input_output_records(fixtures):
    with pytest.warns(UserWarning, match="one file"):
        examples = make(data_path=str(fixtures / "countdown_d1_style.jsonl")).load("test")
    assert examples[0].columns == {"numbers": [44, 19, 35], "target": 98}
    assert len(examples) == 5 and all(e.answer is not None for e in examples)


def test_missing_split_file_is_a_config_error(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"nums": [1, 2, 3], "target": 6}\n')
    with pytest.raises(ConfigError, match="no 'test' data"):
        make(data_path=str(tmp_path)).load("test")
    with pytest.raises(ConfigError, match="does not exist"):
        make(data_path=str(tmp_path / "nope")).load("test")


def test_config_rejects_unknown_fields_and_variants():
    with pytest.raises(ValidationError):
        CountdownConfig(varient="toy")
    with pytest.raises(ValidationError):
        CountdownConfig(variant="big")
    with pytest.raises(ValidationError):
        CountdownConfig(num_numbers=5)
    assert CountdownConfig().name == "countdown"


def test_asking_for_more_toy_puzzles_than_exist_is_a_config_error():
    with pytest.raises(ConfigError, match="found only"):
        CountdownTask(CountdownConfig(variant="toy", num_generated_test=5000)).load("test")


# ------------------------------------------------------------------------------------------------
# rewards

NUMBERS, TARGET = [3, 5, 7], 16
CASES = [
    ("<reasoning>\n7*3=21\n</reasoning>\n<answer>\n3*7-5\n</answer>\n", 1.0),
    ("<answer>(7*3)-5</answer>", 1.0),
    ("<answer>\\boxed{3 \\times 7 - 5}</answer>", 1.0),
    ("<answer>3 × 7 − 5</answer>", 1.0),
    ("<answer>3*7-5 = 16</answer>", 1.0),
    ("<answer>16 = 7*3-5</answer>", 1.0),
    ("<answer> 3 * 7 - 5 </answer> trailing words", 1.0),
    ("<answer>1</answer> ... <answer>3*7-5</answer>", 1.0),  # the last answer counts
    ("<answer>3*7-5</answer> ... <answer>1</answer>", 0.1),
    ("<answer>3*7+5</answer>", 0.1),  # wrong value
    ("<answer>3*7-5+0</answer>", 0.1),  # uses a number not given
    ("<answer>2*8</answer>", 0.1),  # right value, other numbers
    ("<answer>3*7</answer>", 0.1),  # 5 unused
    ("<answer>9**9**9**9</answer>", 0.1),  # rejected, not hung
    ("<answer>(3+5)/0</answer>", 0.1),
    ("<answer>three times seven minus five</answer>", 0.1),
    ("<answer></answer>", 0.1),  # an empty answer is still an answer
    ("3*7-5", 0.0),  # no tags: no answer
    ("<answer>3*7-5", 0.0),  # unclosed
    ("", 0.0),
]


@pytest.mark.parametrize("completion, reward", CASES)
def test_countdown_correctness_values(completion, reward):
    assert countdown_correctness(["p"], [completion], numbers=[NUMBERS], target=[TARGET]) == [reward]


@pytest.mark.parametrize(
    "completion, reward",
    [("3*7-5", 1.0), (" 7*3-5\n", 1.0), ("3*7+5", 0.1), ("3*7-", 0.1), ("", 0.0), ("  ", 0.0)],
)
def test_countdown_toy_correctness_reads_the_bare_completion(completion, reward):
    assert countdown_toy_correctness(["p"], [completion], numbers=[NUMBERS], target=[TARGET]) == [reward]


def test_rewards_take_columns_as_lists_aligned_with_completions():
    out = countdown_correctness(
        ["p", "p"],
        ["<answer>3*7-5</answer>", "<answer>2*8+9</answer>"],
        numbers=[[3, 5, 7], [2, 8, 9]],
        target=[16, 25],
        answer=["3*7-5", "2*8+9"],
        completion_ids=[[1], [2]],
    )
    assert out == [1.0, 1.0]


def test_score_reports_accuracy_and_falls_back_to_a_box_without_tags():
    task = make()
    example = task.load("test")[0]
    good = f"<answer>{example.answer}</answer>"
    assert task.score(example, good) == {"accuracy": 1.0, "answered": 1.0}
    assert task.score(example, f"so \\boxed{{{example.answer}}}") == {"accuracy": 1.0, "answered": 0.0}
    assert task.score(example, "<answer>1+1</answer>") == {"accuracy": 0.0, "answered": 1.0}
    toy = make(variant="toy")
    example = toy.load("test")[0]
    assert toy.score(example, example.answer) == {"accuracy": 1.0, "answered": 1.0}
    assert toy.score(example, "") == {"accuracy": 0.0, "answered": 0.0}
