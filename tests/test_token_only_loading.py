"""Loading a `llada` / `dream` checkpoint whose directory has no tokenizer files (issue 15, item 6).

For token-id work (token-level tasks, energy-style tasks, reference checks) a checkpoint directory
without tokenizer files loads with ``token_only`` (no tokenizer; the mask id from config.json or the
recipe), or with ``tokenizer=DIR`` (the tokenizer files kept elsewhere). Without either option the
error names the directory, the files looked for and both options.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.registry import Registry
from tests.hf_fixtures import write_dream, write_llada

MODELS = ("llada", "dream")
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenization_dream.py")
CLI_ENV = {"COLUMNS": "400", "NO_COLOR": "1"}


def split_tokenizer(source: Path, weights_dir: Path, tokenizer_dir: Path) -> None:
    """Copy ``source`` into ``weights_dir`` without its tokenizer files, which go to ``tokenizer_dir``."""
    weights_dir.mkdir(parents=True)
    tokenizer_dir.mkdir(parents=True)
    for item in source.iterdir():
        shutil.copyfile(item, (tokenizer_dir if item.name in TOKENIZER_NAMES else weights_dir) / item.name)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per model: ``full`` (published layout), ``bare`` (no tokenizer files), ``tok`` (only those)."""
    root = tmp_path_factory.mktemp("token_only")
    out = {}
    for name, write in (("llada", write_llada), ("dream", write_dream)):
        full = root / name
        write(full, seed=3)
        split_tokenizer(full, root / f"{name}-bare", root / f"{name}-tok")
        out[name] = {"full": full, "bare": root / f"{name}-bare", "tok": root / f"{name}-tok"}
    return out


def policy_class(name: str):
    return Registry().get("models", name)


def load(name: str, path: Path, **options):
    """Through the recipe options, as ``ddrl train`` / ``ddrl sample`` load a model."""
    cls = policy_class(name)
    return cls.from_config(cls.Config(path=str(path), **{"dtype": "float32", **options})).eval()


def logits(policy, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, policy.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on one row
    with torch.no_grad():
        return policy(ids, mask)


def has_tokenizer_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name in TOKENIZER_NAMES)


@pytest.mark.parametrize("name", MODELS)
def test_token_only_loads_a_directory_without_tokenizer_files_with_the_same_logits(name, dirs):
    reference = load(name, dirs[name]["full"])
    bare = load(name, dirs[name]["bare"], token_only=True)
    assert bare.tokenizer is None
    assert bare.mask_token_id == reference.mask_token_id == json.loads(
        (dirs[name]["full"] / "config.json").read_text())["mask_token_id"]
    torch.testing.assert_close(logits(bare), logits(reference), rtol=0, atol=0)
    # the keyword option of from_pretrained does the same
    direct = policy_class(name).from_pretrained(dirs[name]["bare"], token_only=True).eval()
    assert direct.tokenizer is None
    torch.testing.assert_close(logits(direct), logits(reference), rtol=0, atol=0)
    # text prompts fail clearly; token ids work
    with pytest.raises(ValueError, match="has no tokenizer: it works on token ids only"):
        bare.encode_prompt("what is 12 + 30?")


@pytest.mark.parametrize("name", MODELS)
def test_token_only_ignores_tokenizer_files_that_are_present(name, dirs):
    policy = load(name, dirs[name]["full"], token_only=True)
    assert policy.tokenizer is None
    torch.testing.assert_close(logits(policy), logits(load(name, dirs[name]["full"])), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_an_explicit_tokenizer_directory_encodes_like_the_checkpoints_own(name, dirs, tmp_path):
    reference = load(name, dirs[name]["full"])
    policy = load(name, dirs[name]["bare"], tokenizer=str(dirs[name]["tok"]))
    assert policy.tokenizer is not None
    for prompt in ("what is 12 + 30?", "the cat sat on the mat"):
        assert policy.encode_prompt(prompt) == reference.encode_prompt(prompt)
        assert policy.tokenizer.encode(prompt) == reference.tokenizer.encode(prompt)
    assert policy.mask_token_id == reference.mask_token_id
    torch.testing.assert_close(logits(policy), logits(reference), rtol=0, atol=0)
    # a file of the tokenizer stands for its directory; the keyword option does the same
    one_file = dirs[name]["tok"] / "tokenizer_config.json"
    direct = policy_class(name).from_pretrained(dirs[name]["bare"], tokenizer=one_file)
    assert direct.encode_prompt("what is 12 + 30?") == reference.encode_prompt("what is 12 + 30?")
    # a save carries the tokenizer it was used with, so the saved directory loads on its own
    policy.save_pretrained(tmp_path / "saved")
    assert has_tokenizer_files(tmp_path / "saved") == has_tokenizer_files(dirs[name]["tok"])
    again = load(name, tmp_path / "saved")
    assert again.encode_prompt("what is 12 + 30?") == reference.encode_prompt("what is 12 + 30?")
    torch.testing.assert_close(logits(again), logits(reference), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_a_missing_tokenizer_names_the_directory_the_files_and_both_options(name, dirs):
    bare = dirs[name]["bare"]
    with pytest.raises(FileNotFoundError) as err:
        load(name, bare)
    message = str(err.value)
    assert f"no tokenizer in {bare}" in message
    for looked_for in ("tokenizer.json", "tokenizer_config.json", "vocab.json"):
        assert looked_for in message
    assert "model.tokenizer=DIR" in message and "model.token_only=true" in message
    assert "tokenizer=DIR" in message and "token_only=True" in message  # the from_pretrained spelling


def test_ddrl_sample_on_a_bare_directory_says_what_to_set_and_runs_a_token_task_token_only(dirs):
    bare = str(dirs["llada"]["bare"])
    small = ["--device", "cpu", "--set", "sampler.max_completion_length=4", "--set", "sampler.block_length=4",
             "--set", "sampler.steps=2"]
    result = CliRunner().invoke(app, ["sample", "--model", "llada", "--model-path", bare, "-p", "x", *small],
                                env=CLI_ENV)
    assert result.exit_code == 2, result.output
    assert "no tokenizer in" in result.output and "model.token_only=true" in result.output
    result = CliRunner().invoke(app, ["sample", "--model", "llada", "--model-path", bare, "--task", "pattern",
                                      "--set", "model.token_only=true", *small], env=CLI_ENV)
    assert result.exit_code == 0, result.output
    assert "3 completions x 4 tokens | NFE 2" in result.output


def test_a_tokenizer_path_that_does_not_exist_or_holds_no_tokenizer_is_named(dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer path .*nowhere \(model\.tokenizer\) does not exist"):
        load("llada", dirs["llada"]["bare"], tokenizer=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*llada-bare.*model\.tokenizer"):
        load("llada", dirs["llada"]["bare"], tokenizer=str(dirs["llada"]["bare"]))
    with pytest.raises(ValueError, match="contradict"):
        load("llada", dirs["llada"]["bare"], tokenizer=str(dirs["llada"]["tok"]), token_only=True)


def test_token_only_takes_the_mask_id_from_config_or_the_recipe_and_else_says_so(dirs, tmp_path):
    directory = shutil.copytree(dirs["dream"]["bare"], tmp_path / "dream")
    config = json.loads((directory / "config.json").read_text())
    del config["mask_token_id"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no mask token id: .*config\.json has no mask_token_id.*model\.mask_token_id"):
        load("dream", directory, token_only=True)
    assert load("dream", directory, token_only=True, mask_token_id=7).mask_token_id == 7


@pytest.mark.parametrize("name", MODELS)
def test_a_token_only_save_writes_no_tokenizer_files_and_loads_back_token_only(name, dirs, tmp_path):
    reference = load(name, dirs[name]["full"])
    # loaded token-only from the full directory: its tokenizer files are not written
    policy = load(name, dirs[name]["full"], token_only=True)
    policy.save_pretrained(tmp_path / "saved")
    assert has_tokenizer_files(tmp_path / "saved") == []
    back = load(name, tmp_path / "saved", token_only=True)
    assert back.tokenizer is None and back.mask_token_id == reference.mask_token_id
    torch.testing.assert_close(logits(back), logits(reference), rtol=0, atol=0)
    # the directory records that it was saved token-only, so a plain load (a resumed run) needs no option
    plain = policy_class(name).from_pretrained(tmp_path / "saved")
    assert plain.tokenizer is None
    torch.testing.assert_close(logits(plain.eval()), logits(reference), rtol=0, atol=0)
    # a save of a policy with a tokenizer carries its files and not the record
    load(name, tmp_path / "saved", tokenizer=str(dirs[name]["tok"])).save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again" / "ddrl_token_only.json").exists()
    assert load(name, tmp_path / "again").tokenizer is not None


def test_ddrl_train_runs_a_token_task_on_a_checkpoint_without_tokenizer_files(dirs, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--model", "llada", "--model-path", str(dirs["llada"]["bare"]), "--set", "model.token_only=true",
        "--set", "model.dtype=float32", "--task", "pattern", "--objective", "dmpo",
        "--set", "sampler.max_completion_length=4", "--set", "sampler.block_length=4", "--set", "sampler.steps=2",
        "--set", "train.max_steps=2", "--set", "train.per_device_train_batch_size=4",
        "--set", "train.num_generations=2", "--set", "train.save_steps=2", "--set", "logging.progress=false",
        "--set", "logging.report_to=[jsonl]", "--output-dir", str(run),
    ], env=CLI_ENV)
    assert result.exit_code == 0, result.output
    assert "done: 2 steps" in result.output
    final = run / "final"
    assert (final / "model.safetensors").is_file() and has_tokenizer_files(final) == []
    assert load("llada", final, token_only=True).tokenizer is None
    # the checkpoint resumes (its policy is read back through from_pretrained, without options)
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=4"], env=CLI_ENV)
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "done: 4 steps" in result.output


def test_a_text_prompt_for_a_token_only_model_is_one_clear_line(tmp_path):
    from typer.testing import CliRunner

    from ddrl.cli.app import app

    out = CliRunner().invoke(app, ["sample", "--model", "tiny", "--set", "model.path=null", "--set", "model.charset=null",
                                   "--set", "model.architecture.vocab_size=5", "--prompt", "hello"])
    assert out.exit_code == 2 and "has no tokenizer" in out.output and "Traceback" not in out.output
