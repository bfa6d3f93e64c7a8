"""GSM8K: local and cached loading with clear errors, d1's rewards, normalised accuracy."""

from __future__ import annotations

import json
import time

import pytest

from ddrl.config import ConfigError
from ddrl.rewards.gsm8k import gsm8k_correctness, gsm8k_integer
from ddrl.tasks.gsm8k import GSM8KConfig, GSM8KTask, gold_answer


def test_gold_answer_is_the_part_after_hashes_without_commas():
    assert gold_answer("step\n#### 1,050") == "1050"
    assert gold_answer("#### -3 ") == "-3"
    assert gold_answer("42") == "42"


def test_loads_train_and_test_from_a_directory(fixtures):
    task = GSM8KTask(GSM8KConfig(data_path=str(fixtures / "gsm8k")))
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (5, 5)
    assert [e.answer for e in train] == ["29", "270", "16", "1050", "21"]
    assert [e.answer for e in test] == ["14", "2880", "7", "-3", "225"]
    assert test[0].id == "gsm8k-test-0" and test[0].question.startswith("A rope is 50 meters")
    assert task.reward_columns(test[1]) == {"answer": "2880"}


def test_loads_a_split_placeholder_path_and_parquet(fixtures, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    records = [json.loads(line) for line in (fixtures / "gsm8k" / "test.jsonl").read_text().splitlines()]
    shard_dir = tmp_path / "main"
    shard_dir.mkdir()
    pq.write_table(pa.Table.from_pylist(records), shard_dir / "test-00000-of-00001.parquet")
    from_parquet = GSM8KTask(GSM8KConfig(data_path=str(tmp_path))).load("test")
    from_jsonl = GSM8KTask(GSM8KConfig(data_path=str(fixtures / "gsm8k" / "{split}.jsonl"))).load("test")
    assert from_parquet == from_jsonl


def test_absent_hf_dataset_is_a_quick_config_error_naming_what_to_provide(tmp_path):
    task = GSM8KTask(GSM8KConfig(cache_dir=str(tmp_path)))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        task.load("test")
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "data_path" in message and "'openai/gsm8k'" in message and "'main'" in message


def test_hf_cache_is_read_in_offline_mode(monkeypatch):
    import datasets
    import huggingface_hub.constants as hub_constants

    seen = {}

    def fake_load_dataset(name, config, split, cache_dir):
        offline = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
        seen.update(name=name, config=config, split=split, offline=offline)
        return [{"question": "Q", "answer": "work\n#### 1,234"}]

    before = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = GSM8KTask(GSM8KConfig()).load("train")
    assert seen == {"name": "openai/gsm8k", "config": "main", "split": "train", "offline": (True, True)}
    assert examples[0].answer == "1234"
    assert (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE) == before


def test_records_without_the_expected_fields_are_a_config_error(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"problem": "Q", "solution": "1"}\n')
    with pytest.raises(ConfigError, match="none of the fields question"):
        GSM8KTask(GSM8KConfig(data_path=str(tmp_path))).load("test")


def test_prompt_is_the_d1_format_block_then_the_question(fixtures):
    task = GSM8KTask(GSM8KConfig(data_path=str(fixtures / "gsm8k")))
    example = task.load("test")[0]
    assert task.format_prompt(example) == (
        "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
        + example.question
    )


# ------------------------------------------------------------------------------------------------
# rewards (gold "2880") and accuracy

R = "<reasoning>\n18*40=720, 720*4=2880\n</reasoning>\n"


@pytest.mark.parametrize(
    "completion, correct, integer",
    [
        (R + "<answer>\n2880\n</answer>\n", 2.0, 0.5),
        ("<answer>2880</answer>", 2.0, 0.5),
        ("<answer> 2880 </answer> and then some", 2.0, 0.5),
        ("<answer>1</answer><answer>2880</answer>", 2.0, 0.5),
        ("<answer>2880</answer><answer>1</answer>", 0.0, 0.5),
        ("<answer>2,880</answer>", 0.0, 0.0),  # d1 compares strings exactly
        ("<answer>$2880</answer>", 0.0, 0.0),
        ("<answer>2880.0</answer>", 0.0, 0.0),
        ("<answer>-3</answer>", 0.0, 0.0),  # the sign is not a digit
        ("<answer>\\boxed{2880}</answer>", 0.0, 0.0),
        ("<answer>٢٨٨٠</answer>", 0.0, 0.0),  # Arabic-Indic digits are not ASCII digits
        ("<answer>\n</answer>", 0.0, 0.0),
        ("<answer>\n  2880  \n</answer>", 2.0, 0.5),  # white space is stripped
        ("<answer>2880 dollars</answer>", 0.0, 0.0),
        ("<answer>28 80</answer>", 0.0, 0.0),
        ("<Answer>2880</Answer>", 0.0, 0.0),  # tags are case-sensitive
        ("<reasoning>\n2880\n</reasoning>", 0.0, 0.0),  # the number only in the reasoning
        ("The answer is 2880", 0.0, 0.0),  # no tags
        ("<answer>\n2880", 0.0, 0.0),  # truncated
    ],
)
def test_correctness_and_integer_rewards(completion, correct, integer):
    assert gsm8k_correctness(["p"], [completion], answer=["2880"]) == [correct]
    assert gsm8k_integer(["p"], [completion], answer=["2880"]) == [integer]


@pytest.mark.parametrize(
    "completion, accuracy, answered",
    [
        ("<answer>2880</answer>", 1.0, 1.0),
        ("<answer>$2,880.00</answer>", 1.0, 1.0),
        ("<answer>She earns 2880 dollars.</answer>", 1.0, 1.0),
        ("<answer>\\boxed{2,880}</answer>", 1.0, 1.0),
        ("so the total is \\boxed{2880}", 1.0, 0.0),  # box without tags, as d1's evaluation
        ("<answer>2881</answer>", 0.0, 1.0),
        ("<answer>2880</answer> <answer>2881</answer>", 0.0, 1.0),  # the last answer counts
        ("<answer>\\$2{,}880</answer>", 0.0, 1.0),  # LaTeX grouping braces split the number
        ("<answer>2.88 \\times 10^3</answer>", 0.0, 1.0),  # the last number is 3
        ("The answer is 2880", 0.0, 0.0),
    ],
)
def test_score_compares_numbers_after_normalisation(fixtures, completion, accuracy, answered):
    task = GSM8KTask(GSM8KConfig(data_path=str(fixtures / "gsm8k")))
    example = task.load("test")[1]
    assert task.score(example, completion) == {"accuracy": accuracy, "answered": answered}


def test_negative_gold_matches_unicode_minus(fixtures):
    task = GSM8KTask(GSM8KConfig(data_path=str(fixtures / "gsm8k")))
    example = task.load("test")[3]
    assert task.score(example, "<answer>\u22123 degrees</answer>")["accuracy"] == 1.0
