"""The ``ddrl`` command line, run in-process through typer's ``CliRunner``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import pytest
import torch
from typer.testing import CliRunner

import ddrl
from ddrl.cli.app import app
from ddrl.generation import generate
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig

BUILTINS = {
    "models": ["tiny"],
    "samplers": ["block", "ancestral"],
    "estimators": ["exact", "elbo", "one_step", "coupled"],
}
SMALL = ["--set", "sampler.max_completion_length=8", "--set", "sampler.block_length=8", "--set", "sampler.steps=4"]
SUMMARY = re.compile(r"^(\d+) completions x (\d+) tokens \| NFE (\d+) \| \d+ tokens/s \| [\d.]+ s$", re.M)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def without_timing(output: str) -> str:
    """The output with the run-dependent speed and wall time blanked out."""
    return re.sub(r"\| \d+ tokens/s \| [\d.]+ s", "| _ tokens/s | _ s", output)


# ------------------------------------------------------------------------------------------------
# ddrl plugins / --version


def test_plugins_lists_builtins_with_distribution_ddrl(runner):
    result = invoke(runner, "plugins")
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5:
            rows[(cells[0], cells[1])] = cells
    for group, names in BUILTINS.items():
        for name in names:
            assert (group, name) in rows, f"{group}/{name} not listed:\n{result.output}"
            _, _, distribution, target, status = rows[(group, name)]
            assert distribution.split() == ["ddrl", ddrl.__version__]
            assert target.startswith(f"ddrl.{group}.")
            assert status == "ok"


def test_plugins_rejects_an_unknown_group(runner):
    result = invoke(runner, "plugins", "--group", "sampler")
    assert result.exit_code == 2
    assert "unknown group 'sampler'" in result.output


def test_plugins_group_filter_shows_only_that_group(runner):
    result = invoke(runner, "plugins", "--group", "samplers")
    assert result.exit_code == 0
    assert " block " in result.output and " tiny " not in result.output


def test_version_flag_prints_the_version(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ddrl {ddrl.__version__}"


# ------------------------------------------------------------------------------------------------
# ddrl sample


def test_sample_prints_prompt_completion_and_summary(runner):
    result = invoke(runner, "sample", "--model", "tiny", "--prompt", "1+2=", *SMALL)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "1+2="
    assert lines[1].strip()  # the completion (at most 8 characters, specials dropped)
    summary = SUMMARY.search(result.output)
    assert summary is not None, result.output
    assert summary.groups() == ("1", "8", "4")  # one NFE per step: 1 block x 4 steps


def test_sample_with_the_same_seed_prints_the_same_output(runner):
    args = ["sample", "--prompt", "1+2=", *SMALL, "--set", "sampler.temperature=1.0"]
    first = invoke(runner, *args, "--seed", "7")
    second = invoke(runner, *args, "--seed", "7")
    other = invoke(runner, *args, "--seed", "8")
    assert first.exit_code == second.exit_code == other.exit_code == 0
    assert without_timing(first.output) == without_timing(second.output)
    # at temperature 1 the seed drives the draws, so another seed gives another completion
    assert without_timing(first.output) != without_timing(other.output)


def test_sample_two_prompts_print_two_completions(runner):
    result = invoke(runner, "sample", "-p", "1+2=", "-p", "ab", *SMALL)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "1+2="
    assert "ab" in lines[2:]  # after the first prompt's completion
    assert SUMMARY.search(result.output).group(1) == "2"


def test_sample_steps_need_only_divide_by_the_number_of_blocks(runner):
    result = invoke(
        runner, "sample", "-p", "ab", "--set", "sampler.max_completion_length=8",
        "--set", "sampler.block_length=8", "--set", "sampler.steps=3",
    )
    assert result.exit_code == 0, result.output
    assert SUMMARY.search(result.output).groups() == ("1", "8", "3")


def test_sample_without_prompt_or_task_exits_2_with_a_message(runner):
    result = invoke(runner, "sample")
    assert result.exit_code == 2
    assert "--prompt" in result.output and "--task" in result.output


def test_sample_bad_option_value_exits_2_naming_the_field(runner):
    result = invoke(runner, "sample", "-p", "ab", "--set", "sampler.remasking=bad")
    assert result.exit_code == 2
    assert "sampler.remasking='bad'" in result.output
    assert "low_confidence" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_sample_unknown_sampler_exits_2_with_a_suggestion(runner):
    result = invoke(runner, "sample", "-p", "ab", "--sampler", "blok")
    assert result.exit_code == 2
    assert "did you mean 'block'?" in result.output


def test_sample_missing_model_path_exits_2_naming_the_path(runner, tmp_path):
    missing = tmp_path / "nonexistent"
    result = invoke(runner, "sample", "-p", "ab", "--model-path", str(missing), *SMALL)
    assert result.exit_code == 2
    assert str(missing) in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("prompt", ["[b]x[/b]", "a[/q]"])
def test_sample_prints_prompts_verbatim(runner, prompt):
    result = invoke(runner, "sample", "-p", prompt, *SMALL)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == prompt


def test_sample_from_a_saved_model_matches_generate(runner, tmp_path):
    arch = TinyArchitecture(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, init_std=0.3)
    TinyPolicy.fresh(arch, CharTokenizer(), seed=4).save_pretrained(tmp_path / "model")

    result = invoke(
        runner, "sample", "--model-path", str(tmp_path / "model"), "--prompt", "ab", "--seed", "3",
        *SMALL, "--set", "sampler.temperature=1.0", "--device", "cpu",
    )
    assert result.exit_code == 0, result.output

    policy = TinyPolicy.from_pretrained(tmp_path / "model")
    sampler = BlockSampler(BlockSamplerConfig(max_completion_length=8, block_length=8, steps=4, temperature=1.0))
    expected = generate(policy, sampler, ["ab"], generator=torch.Generator().manual_seed(3))
    assert result.output.startswith(f"ab\n{expected.completions[0]}\n\n")
    assert SUMMARY.search(result.output).group(3) == str(expected.nfe)


def test_sample_takes_prompts_from_a_task(runner):
    result = invoke(runner, "sample", "--task", "countdown", "--set", "task.variant=toy", "-n", "3", *SMALL)
    assert result.exit_code == 0, result.output
    summary = SUMMARY.search(result.output)
    assert summary and summary.group(1) == "3", result.output
    assert len(re.findall(r"^\d,\d,\d:\d+=$", result.output, re.M)) == 3  # toy prompts: "3,5,7:15="
