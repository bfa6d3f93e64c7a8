"""The supervised stage on data: the `records` task (layouts, s1K mapping, hold-out, errors),
truncation, and ``ddrl sft`` feeding ``ddrl train``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import ConfigError
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.tasks.protocol import D1_SYSTEM_PROMPT
from ddrl.tasks.records import RecordsConfig, RecordsTask
from ddrl.training.rollout import reference_chunk

TINY = {"architecture": {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64, "max_seq_len": 128}}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def task(**kwargs) -> RecordsTask:
    return RecordsTask(RecordsConfig(**kwargs))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


# ------------------------------------------------------------------------------------------------
# layouts


def test_prompt_response_records_give_prompts_and_reference_completions(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}])
    write_jsonl(data / "test.jsonl", [{"question": "3+3?", "answer": "6"}])
    t = task(data_path=str(data))
    train, test = t.split("train"), t.split("test")
    assert [e.question for e in train] == ["1+1?", "2+2?"]
    assert [t.reference_completion(e) for e in train] == ["2", "4"]
    assert [e.question for e in test] == ["3+3?"]
    assert t.score(test[0], " 6 ") == {"accuracy": 1.0} and t.score(test[0], "7") == {"accuracy": 0.0}


def test_named_fields_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "hi", "a": "yo", "question": "not this"}])
    t = task(data_path=str(path), prompt_field="q", response_field="a", system_prompt="be brief", test_share=0.0)
    (ex,) = t.split("train")
    assert ex.columns["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert ex.answer == "yo"


def test_chat_messages_use_the_last_assistant_turn_as_response(tmp_path):
    record = {"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]}
    sharegpt = {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [record, sharegpt])
    first, second = task(data_path=str(path), test_share=0.0).split("train")
    assert [m["content"] for m in first.columns["messages"]] == ["sys", "a", "b", "c"]
    assert first.answer == "d"
    assert second.columns["messages"] == [{"role": "user", "content": "x"}] and second.answer == "y"


def test_s1k_records_map_to_the_d1_sft_format(tmp_path):
    record = {"question": "What is 6*7?", "solution": "42", "thinking_trajectories": ["six sevens", "other"],
              "attempt": "\\boxed{42}", "cot_type": "math"}
    path = write_jsonl(tmp_path / "s1k.jsonl", [record])
    (ex,) = task(data_path=str(path), test_share=0.0).split("train")  # format auto-detected
    assert ex.columns["messages"] == [{"role": "user", "content": D1_SYSTEM_PROMPT + "\n\nWhat is 6*7?"}]
    assert ex.answer == "<reasoning>six sevens</reasoning>\n<answer>\\boxed{42}</answer>"


def test_single_file_is_split_by_a_deterministic_hash(tmp_path):
    records = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(400)]
    path = write_jsonl(tmp_path / "all.jsonl", records)
    t = task(data_path=str(path), test_share=0.1)
    train, test = t.split("train"), t.split("test")
    assert len(train) + len(test) == 400
    assert 20 <= len(test) <= 60  # 10% of 400, binomial spread
    assert not {e.question for e in train} & {e.question for e in test}
    assert [e.question for e in test] == [e.question for e in task(data_path=str(path), test_share=0.1).split("test")]


def test_errors_name_what_is_missing(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "no prompt here"}])
    with pytest.raises(ConfigError, match="none of the fields prompt, question.*its fields: text"):
        task(data_path=str(path), test_share=0.0).split("train")
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "only a question"}]}])
    with pytest.raises(ConfigError, match="no assistant turn"):
        task(data_path=str(chat), test_share=0.0).split("train")
    with pytest.raises(ConfigError, match="does not exist"):
        task(data_path=str(tmp_path / "missing.jsonl")).split("train")
    with pytest.raises(ValueError, match="exactly one of task.data_path"):
        RecordsConfig()
    with pytest.raises(ConfigError, match="not available offline.*task.data_path"):
        task(hf_dataset="nobody/no-such-dataset-ddrl", cache_dir=str(tmp_path / "hf")).split("train")


def test_long_responses_are_cut_and_prompts_kept_whole(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a long prompt kept whole", "response": "x" * 50}])
    t = task(data_path=str(path), test_share=0.0)
    policy = TinyPolicy.fresh(TinyArchitecture(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32), CharTokenizer(), 0)
    examples = t.split("train")
    rollout, _ = reference_chunk(policy, t, examples, [0], [], random.Random(0), length=8)
    prompt = rollout.batch.prompt_ids[0].tolist()
    assert policy.tokenizer.decode(prompt) == "a long prompt kept whole"
    assert policy.decode_completion(rollout.batch.completion_ids[0]) == "x" * 8
    short = reference_chunk(policy, t, examples, [0], [], random.Random(0), length=60)[0]
    ids = short.batch.completion_ids[0].tolist()
    assert ids[50:] == [policy.eos_token_id] * 10  # right-padded with EOS so the model learns to stop


# ------------------------------------------------------------------------------------------------
# the command


def test_sft_command_on_a_task_with_known_solutions(tmp_path):
    out = tmp_path / "run"
    result = invoke("sft", "--model", "tiny", "--task", "countdown", "--set", "train.max_steps=2",
                    "--set", "eval.num_examples=8", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "final" / "model.safetensors").is_file()
    assert "ddrl train --model tiny --model-path" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["objective"]["name"] == "sft"


@pytest.mark.slow
def test_sft_on_a_file_then_rl_from_its_output(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"{i}+1=", "response": str(i + 1)} for i in range(40)])
    sft_dir, rl_dir = tmp_path / "sft", tmp_path / "rl"
    result = invoke(
        "sft", "--data", str(data), "--output-dir", str(sft_dir), "--set", "model.path=null",
        "--set", f"model.architecture={json.dumps(TINY['architecture'])}",
        "--set", "train.max_steps=3", "--set", "train.per_device_train_batch_size=8",
        "--set", "task.test_share=0.2", "--set", "eval.during_training=false",
    )
    assert result.exit_code == 0, result.output
    final = sft_dir / "final"
    sft_weights = TinyPolicy.from_pretrained(final).state_dict()
    result = invoke(
        "train", "--model-path", str(final), "--output-dir", str(rl_dir), "--set", "train.max_steps=2",
        "--set", "train.per_device_train_batch_size=16", "--set", "eval.during_training=false",
    )
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load((rl_dir / "config.yaml").read_text())
    assert cfg["model"]["path"] == str(final) and cfg["objective"]["name"] == "dmpo"
    rl_weights = TinyPolicy.from_pretrained(rl_dir / "final").state_dict()
    assert any(not torch.equal(sft_weights[k], rl_weights[k]) for k in sft_weights)  # RL moved away from SFT


def test_sft_rejects_data_with_another_task(tmp_path):
    result = invoke("sft", "--data", str(tmp_path / "x.jsonl"), "--task", "countdown")
    assert result.exit_code == 2 and "drop --task countdown" in result.output
