"""Clear errors instead of tracebacks (issue 16, item 6).

Each case is something a user runs into — a truncated download, a hand-edited config.json, a JSONL
file with a stray line, a dataset that is not cached, a half-copied model directory, a prompt that
does not fit the model, a broken plugin — and each test checks that the command prints one line
naming the file, line or field and exits with status 2 (``ddrl plugins --check``: 1), where the
code before this change raised a traceback, failed later with a message naming none of them, or
exited 0.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import ConfigError
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.hf import CheckpointError
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.tasks.data import read_records, read_split
from tests.test_registry import FAKE_PREFIX, write_distribution

ENV = {"COLUMNS": "400", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
SMALL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 16, "max_seq_len": 64}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def one_line(output: str) -> str:
    return " ".join(output.split())  # undo rich's wrapping


def assert_clean_failure(result, *fragments: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, and every fragment in the (unwrapped) output."""
    text = one_line(result.output)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A saved text tiny model (config.json, model.safetensors, tokenizer.json)."""
    path = tmp_path / "model"
    TinyPolicy.fresh(TinyArchitecture(**SMALL), CharTokenizer(), seed=0).save_pretrained(path)
    return path


def sample(model_path: Path):
    return invoke("sample", "--model-path", model_path, "--prompt", "1+2=", "--device", "cpu",
                  "--set", "sampler.max_completion_length=4", "--set", "sampler.block_length=4",
                  "--set", "sampler.steps=2")


def truncate(file: Path, keep: float = 0.5) -> None:
    size = file.stat().st_size
    with file.open("r+b") as f:
        f.truncate(int(size * keep))


# ------------------------------------------------------------------------------------------------
# a truncated or corrupt model.safetensors (before: SafetensorError traceback from inside safetensors)


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_truncated_tiny_weights_are_named_by_sample(tiny_dir, keep):
    truncate(tiny_dir / "model.safetensors", keep)
    assert_clean_failure(sample(tiny_dir), f"{tiny_dir / 'model.safetensors'} is truncated or corrupt",
                         "Download or save it again")


def test_truncated_tiny_weights_are_named_by_eval(tiny_dir, tmp_path):
    truncate(tiny_dir / "model.safetensors")
    result = invoke("eval", tiny_dir, "--task", "countdown", "--set", "task.variant=toy", "--set", "eval.lengths=[8]",
                    "--set", "eval.seeds=[0]", "--results", tmp_path / "results.jsonl", "--device", "cpu")
    assert_clean_failure(result, "model.safetensors is truncated or corrupt")


def test_corrupt_safetensors_header_is_named(tiny_dir):
    file = tiny_dir / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:16] = b"\xff" * 8  # the JSON header's first bytes
    file.write_bytes(bytes(data))
    assert_clean_failure(sample(tiny_dir), "model.safetensors is truncated or corrupt")


def test_truncated_llada_shard_is_named(tmp_path):
    from ddrl.models.llada import LLaDAPolicy
    from tests.hf_fixtures import write_llada

    directory = tmp_path / "llada"
    write_llada(directory, shards=2)
    truncate(directory / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors is truncated or corrupt"):
        LLaDAPolicy.from_pretrained(directory)


# ------------------------------------------------------------------------------------------------
# config.json with missing keys (before: silently defaulted, then a size mismatch)


def _edit_config(directory: Path, drop: tuple[str, ...] = (), **values) -> None:
    config = json.loads((directory / "config.json").read_text())
    for key in drop:
        del config[key]
    config.update(values)
    (directory / "config.json").write_text(json.dumps(config))


def test_tiny_config_without_d_model_names_the_key(tiny_dir):
    _edit_config(tiny_dir, drop=("d_model",))
    # before: d_model defaulted to 256 and load_state_dict raised "size mismatch" for every tensor
    assert_clean_failure(sample(tiny_dir), f"{tiny_dir / 'config.json'} lacks 'd_model'", "d_model=256")


def test_tiny_config_with_a_wrong_width_names_the_tensor_and_keys(tiny_dir):
    _edit_config(tiny_dir, ffn_hidden=24)
    assert_clean_failure(sample(tiny_dir), "has shape (16, 16), but", "implies", "ffn_hidden")


def test_tiny_config_that_is_not_json_is_named(tiny_dir):
    (tiny_dir / "config.json").write_text('{"model_type": "ddrl-tiny", ')
    assert_clean_failure(sample(tiny_dir), f"{tiny_dir / 'config.json'} is not valid JSON")


def test_llada_config_without_the_mlp_width_names_the_key(tmp_path):
    from ddrl.models.llada import LLaDAPolicy
    from tests.hf_fixtures import write_llada

    directory = tmp_path / "llada"
    write_llada(directory)
    _edit_config(directory, drop=("mlp_hidden_size", "mlp_ratio"))
    # before: the width defaulted to 4 x d_model and the load failed on ff_proj's shape
    with pytest.raises(CheckpointError, match=r"config\.json lacks 'mlp_hidden_size' or 'mlp_ratio'"):
        LLaDAPolicy.from_pretrained(directory)


def test_dream_config_without_kv_heads_names_the_key(tmp_path):
    from ddrl.models.dream import DreamPolicy
    from tests.hf_fixtures import write_dream

    directory = tmp_path / "dream"
    write_dream(directory)  # grouped-query attention: 2 key/value heads of 4
    _edit_config(directory, drop=("num_key_value_heads",))
    with pytest.raises(CheckpointError, match=r"config\.json lacks 'num_key_value_heads'"):
        DreamPolicy.from_pretrained(directory)


# ------------------------------------------------------------------------------------------------
# JSONL lines that are not objects (before: AttributeError 'list' object has no attribute 'items')


@pytest.mark.parametrize("line, kind", [("[1, 2]", "array"), ('"a prompt"', "string"), ("3", "number")])
def test_jsonl_line_that_is_not_an_object_is_named_by_file_and_line(tmp_path, line, kind):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1=", "response": "2"}\n\n' + line + "\n")
    with pytest.raises(ConfigError, match=rf"data\.jsonl:3 is a JSON {kind}, not an object"):
        read_records(data, "records")


def test_jsonl_line_that_is_not_json_is_named_by_file_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1=", "response": "2"}\n{"prompt": 1+1}\n')
    # before: "Expecting ',' delimiter: line 1 column 13" — line 1 of the line, not of the file
    with pytest.raises(ConfigError, match=r"data\.jsonl:2 is not valid JSON"):
        read_records(data, "records")


def test_json_list_with_a_non_object_is_named(tmp_path):
    data = tmp_path / "train.json"
    data.write_text('[{"prompt": "a", "response": "b"}, ["a", "b"]]')
    with pytest.raises(ConfigError, match=r"record 1 of the list is a JSON array"):
        read_split(tmp_path, "train", "records")


def test_sft_on_a_jsonl_with_a_stray_line_exits_2_naming_the_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1=", "response": "2"}\n[1, 2]\n')
    result = invoke("sft", "--data", data, "--output-dir", tmp_path / "run", "--set", "train.max_steps=1")
    assert_clean_failure(result, f"{data}:2 is a JSON array, not an object")


# ------------------------------------------------------------------------------------------------
# eval --task gsm8k|math500 offline with nothing cached (before: ConfigError traceback from eval's loop)


@pytest.mark.parametrize("task, dataset", [("gsm8k", "openai/gsm8k"), ("math500", "HuggingFaceH4/MATH-500")])
def test_eval_of_an_uncached_dataset_offline_says_what_to_do(task, dataset, tmp_path):
    result = invoke("eval", "builtin:countdown", "--task", task, "--set", f"task.cache_dir={tmp_path / 'empty'}",
                    "--results", tmp_path / "results.jsonl", "--device", "cpu")
    assert_clean_failure(result, f"{task}: the 'test' split is not available offline", "task.data_path", dataset)


# ------------------------------------------------------------------------------------------------
# a partial final/ (before: "mask_token_id 1 != 97" for a missing tokenizer.json)


def test_partial_model_directory_without_weights_says_it_is_partial(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    assert_clean_failure(sample(tiny_dir), f"{tiny_dir / 'model.safetensors'} is missing",
                         "a partial copy or an interrupted save")


def test_partial_model_directory_without_tokenizer_names_the_tokenizer(tiny_dir):
    (tiny_dir / "tokenizer.json").unlink()
    assert_clean_failure(sample(tiny_dir), f"{tiny_dir / 'tokenizer.json'} is missing", "describes a text model")


def test_token_only_model_still_loads_without_a_tokenizer(tmp_path):
    TinyPolicy.fresh(TinyArchitecture(vocab_size=5, **SMALL), None).save_pretrained(tmp_path / "tokens")
    assert TinyPolicy.from_pretrained(tmp_path / "tokens").mask_token_id == 4


# ------------------------------------------------------------------------------------------------
# a prompt + completion longer than max_seq_len, checked before training starts (before: "sequence
# length 74 exceeds max_seq_len 64" from the first rollout, after the model load and held-out evaluation)


def test_train_with_a_completion_that_does_not_fit_stops_before_training(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--output-dir", run, "--set", "train.max_steps=1", "--set", "sampler.max_completion_length=56",
                    "--set", "sampler.block_length=56", "--set", "sampler.steps=56")
    assert_clean_failure(result, "sampler.max_completion_length 56", "maximum sequence length 64",
                         "max_seq_len", "train.max_prompt_length")
    assert not (run / "metrics.jsonl").exists()  # not even the step-0 held-out evaluation ran


def test_sequence_length_check_names_example_and_accepts_a_prompt_cut():
    from ddrl.registry import Registry
    from ddrl.tasks.countdown import CountdownConfig
    from ddrl.training.preflight import check_sequence_lengths

    task = Registry().build("tasks", CountdownConfig(variant="toy", operators="+-", num_generated_train=50))
    policy = TinyPolicy.fresh(TinyArchitecture(**{**SMALL, "max_seq_len": 16}), CharTokenizer())
    examples = task.split("train")
    longest = max(len(task.encode(ex, policy)) for ex in examples)
    check_sequence_lengths(policy, task, examples, 16 - longest)  # fits exactly
    with pytest.raises(ConfigError, match=rf"has {longest} tokens.*sampler\.max_completion_length <= {16 - longest}"):
        check_sequence_lengths(policy, task, examples, 17 - longest)
    check_sequence_lengths(policy, task, examples, 17 - longest, max_prompt_length=longest - 1)
    with pytest.raises(ConfigError, match="exceeds the model's maximum sequence length 16"):
        check_sequence_lengths(policy, task, examples, 17)
    with pytest.raises(ConfigError, match=rf"has {longest} tokens"):  # the whole canvas, no room for these prompts
        check_sequence_lengths(policy, task, examples, 16)


def test_sequence_length_check_covers_the_held_out_evaluation():
    from ddrl.config import EvalConfig
    from ddrl.registry import Registry
    from ddrl.tasks.countdown import CountdownConfig
    from ddrl.training.preflight import check_sequence_lengths

    task = Registry().build("tasks", CountdownConfig(variant="toy", operators="+-", num_generated_train=50))
    policy = TinyPolicy.fresh(TinyArchitecture(**SMALL), CharTokenizer())
    examples = task.split("train")
    check_sequence_lengths(policy, task, examples, 8, eval_cfg=EvalConfig(lengths=[60], during_training=False))
    with pytest.raises(ConfigError, match=r"held-out evaluation.*eval\.lengths\[0\]"):
        check_sequence_lengths(policy, task, examples, 8, eval_cfg=EvalConfig(lengths=[60], during_training=True))


# ------------------------------------------------------------------------------------------------
# ddrl plugins --check (before: no such option; `ddrl plugins` exits 0 whatever it finds)


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    for module in [m for m in sys.modules if m.startswith(FAKE_PREFIX)]:
        del sys.modules[module]
    importlib.invalidate_caches()


def test_plugins_check_exits_0_when_every_plugin_is_healthy():
    result = invoke("plugins", "--check")
    assert result.exit_code == 0, result.output
    assert "no plugin problems" in one_line(result.output)


def test_plugins_check_exits_1_naming_a_plugin_that_fails_to_import(site):
    module = f"{FAKE_PREFIX}broken_sampler"
    write_distribution(site, "ddrltest-broken", "0.1", {"ddrl.samplers": {"broken": f"{module}:Whatever"}},
                       {module: "raise ImportError('needs libfoo.so')\n"})
    importlib.invalidate_caches()
    assert invoke("plugins").exit_code == 0  # the listing alone still succeeds
    text = assert_clean_failure(invoke("plugins", "--check"), "ddrltest-broken", "--check: 1 problem(s)", code=1)
    assert "needs libfoo.so" in text
    assert invoke("plugins", "--check", "--group", "objectives").exit_code == 0  # another group: nothing to report


def test_plugins_check_exits_1_on_a_broken_interface(site):
    module = f"{FAKE_PREFIX}loose_sampler"
    write_distribution(site, "ddrltest-loose", "0.1", {"ddrl.samplers": {"loose": f"{module}:Loose"}},
                       {module: "class Loose:\n    pass\n"})
    importlib.invalidate_caches()
    assert_clean_failure(invoke("plugins", "--check"), "ddrltest-loose", code=1)


def test_copied_model_directory_still_loads(tiny_dir, tmp_path):
    """The checks leave an intact directory alone (and a copy of it, as ``cp -r`` leaves it)."""
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    policy = TinyPolicy.from_pretrained(copy)
    assert policy.arch.d_model == SMALL["d_model"] and policy.tokenizer is not None


@pytest.mark.parametrize("line,message", [
    ('{"length": 8, "steps": 4, "seed": 0}', "lacks 'task_id'"),
    ('[1, 2]', "is a JSON list, not a record"),
])
def test_a_results_record_without_its_keys_is_named_with_its_line(tmp_path, line, message):
    from ddrl.evaluation.results import ResultStore

    path = tmp_path / "results.jsonl"
    path.write_text('{"task_id": "countdown", "length": 8, "steps": 4, "seed": 0}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"results.jsonl:2 {message}"):
        ResultStore(path).load()
    out = CliRunner().invoke(app, ["leaderboard", "--results", str(path)])
    assert out.exit_code == 2 and "results.jsonl:2" in out.output, out.output
