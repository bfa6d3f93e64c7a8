"""One source of truth for a run (issue 16, item 2; item 9's help texts): Python and the CLI
assemble the same run, ``config.yaml`` records what was loaded, and the default run directory
names the model, the task and the objective."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import StrictConfig, build_config, resolve_config
from ddrl.models.tiny import TinyPolicy, resolve_builtin
from ddrl.registry import Registry

# one short optimizer step of the default recipe (flags and Python alike)
QUICK = [
    "train.max_steps=1", "train.per_device_train_batch_size=4", "train.num_generations=2",
    "train.num_iterations=1", "train.save_steps=1", "task.num_generated_train=8", "task.num_generated_test=4",
    "eval.during_training=false", "logging.report_to=[jsonl]", "logging.progress=false",
]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def recorded(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


# ------------------------------------------------------------------------------------------------
# the objective's preferred estimator: Python and the CLI alike


@pytest.mark.parametrize("objective, estimator", [("diffu_grpo", "one_step"), ("coupled_grpo", "coupled"),
                                                  ("dmpo", "elbo")])
def test_a_recipe_without_an_estimator_gets_the_objectives_preferred_one_from_python(registry, objective, estimator):
    # before: build_config kept RunConfig's default `elbo` while `ddrl train --objective` gave the preferred one
    cfg = build_config({"objective": {"name": objective}}, registry=registry)
    assert cfg.estimator.name == estimator
    assert resolve_config(build_config({"objective": objective}), registry).estimator.name == estimator
    # estimator options without a name are the preferred estimator's options
    assert build_config({"objective": objective, "estimator": {}}, registry=registry).estimator.name == estimator
    # a named estimator stays
    assert build_config({"objective": objective, "estimator": "exact"}, registry=registry).estimator.name == "exact"


def test_python_assembles_the_run_the_cli_assembles(registry):
    from ddrl.run import DEFAULT_RECIPE, assemble_run

    python = assemble_run(DEFAULT_RECIPE, names={"objective": "diffu_grpo"}, overrides={"train.max_steps": 3},
                          registry=registry)
    from ddrl.cli.common import assemble_config
    from ddrl.run import builtin_recipe

    cli = assemble_config(registry, builtin_recipe(DEFAULT_RECIPE), {"objective": "diffu_grpo"},
                          ["train.max_steps=3"], sections=None)
    assert python == cli
    assert python.estimator.name == "one_step" and python.train.max_steps == 3


def test_the_python_entry_point_trains_the_run_the_cli_trains(tmp_path):
    import ddrl.run

    cli_dir, py_dir = tmp_path / "cli", tmp_path / "python"
    result = invoke("train", "--objective", "diffu_grpo", "--output-dir", str(cli_dir), *sets(QUICK))
    assert result.exit_code == 0, result.output

    out = ddrl.run.train(objective="diffu_grpo", output_dir=py_dir, overrides=QUICK)
    assert out.steps == 1 and out.run_dir == py_dir and (py_dir / "final" / "model.safetensors").is_file()

    cli, python = recorded(cli_dir), recorded(py_dir)
    assert cli["estimator"]["name"] == python["estimator"]["name"] == "one_step"
    cli["train"].pop("output_dir"), python["train"].pop("output_dir")
    assert python == cli


# ------------------------------------------------------------------------------------------------
# config.yaml records what was loaded


def test_config_yaml_records_the_architecture_of_the_loaded_checkpoint(tmp_path):
    shipped = json.loads((resolve_builtin("builtin:countdown") / "config.json").read_text())
    run = tmp_path / "run"
    result = invoke("train", "--model", "tiny", "--model-path", "builtin:countdown", "--output-dir", str(run),
                    *sets(QUICK))
    assert result.exit_code == 0, result.output
    model = recorded(run)["model"]
    # before: the recipe's defaults (d_model 256, max_seq_len 1024) while 128 / 64 were loaded
    assert model["path"] == "builtin:countdown"
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden", "max_seq_len"):
        assert model["architecture"][key] == shipped[key], key
    loaded = TinyPolicy.from_pretrained(resolve_builtin("builtin:countdown"))
    assert model["architecture"] == loaded.arch.model_dump(mode="json")
    assert model["charset"] == loaded.tokenizer.charset
    # what was recorded builds the network that was trained, without the checkpoint
    rebuilt = build_config({"model": {**model, "path": None}}, registry=Registry(), sections=["model"]).model
    fresh = TinyPolicy.from_config(rebuilt)
    trained = TinyPolicy.from_pretrained(run / "final")
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in trained.state_dict().items()}


class _Reporting(StrictConfig):
    name: str = "reporting"
    width: int = 8


class _ReportingSampler:
    """A component whose class reports the options it will really use (``effective_config``)."""

    Config = _Reporting

    @classmethod
    def effective_config(cls, config: _Reporting) -> _Reporting:
        return config.model_copy(update={"width": 64})


def test_resolving_applies_a_components_effective_config():
    registry = Registry()
    registry.register("samplers", "reporting", _ReportingSampler)
    cfg = build_config({"sampler": {"name": "reporting", "width": 8}}, registry=registry, sections=["sampler"])
    assert cfg.sampler.width == 64
    assert resolve_config(cfg, registry, ["sampler"]).sampler.width == 64  # idempotent


# ------------------------------------------------------------------------------------------------
# the default run directory


def test_the_default_run_directory_names_model_task_and_objective(registry):
    from ddrl.run import DEFAULT_RECIPE, assemble_run

    assert assemble_run(DEFAULT_RECIPE, registry=registry).train.output_dir == "runs/tiny-countdown-dmpo"
    # a recipe's default-named directory follows the run's model, task and objective (flag or --set)
    assert assemble_run(DEFAULT_RECIPE, names={"objective": "diffu_grpo"},
                        registry=registry).train.output_dir == "runs/tiny-countdown-diffu-grpo"
    assert assemble_run(DEFAULT_RECIPE, names={"task": "ising"},
                        registry=registry).train.output_dir == "runs/tiny-ising-dmpo"
    assert assemble_run(DEFAULT_RECIPE, overrides=["objective.name=sft", "objective.alpha=null",
                                                   "objective.baseline=null"], sections=[],
                        registry=registry).train.output_dir == "runs/tiny-countdown-sft"
    # a directory the recipe chose stays (a user's recipe, the pretraining recipes)
    mine = {"train": {"output_dir": "runs/mine"}}
    assert assemble_run(mine, names={"objective": "coupled_grpo"}, registry=registry).train.output_dir == "runs/mine"
    assert assemble_run("tiny/pretrain_countdown.yaml", registry=registry).train.output_dir == "runs/pretrain-countdown"
    # a recipe without one gets the default; a directory that is given always wins
    assert assemble_run({"objective": "sft"}, registry=registry).train.output_dir == "runs/tiny-countdown-sft"
    assert assemble_run(DEFAULT_RECIPE, names={"objective": "diffu_grpo"}, extra={"train.output_dir": "x"},
                        registry=registry).train.output_dir == "x"
    assert assemble_run(DEFAULT_RECIPE, names={"objective": "diffu_grpo"}, overrides=["train.output_dir=y"],
                        registry=registry).train.output_dir == "y"


def test_a_plugin_objective_trains_into_its_own_directory_and_the_next_run_is_not_refused(tmp_path, monkeypatch):
    if "spg" not in Registry().names("objectives"):
        pytest.skip("the ddrl-spg plugin package (plugins/ddrl-spg) is not installed")
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--objective", "spg", *sets(QUICK))
    assert result.exit_code == 0, result.output
    # before: it wrote into runs/tiny-countdown-dmpo, and the next `ddrl train` was refused there
    assert recorded(tmp_path / "runs" / "tiny-countdown-spg")["objective"]["name"] == "spg"
    assert not (tmp_path / "runs" / "tiny-countdown-dmpo").exists()


# ------------------------------------------------------------------------------------------------
# recipes from Python


def test_read_recipe_takes_files_builtin_names_dicts_and_configs(tmp_path, registry):
    from ddrl.config import ConfigError
    from ddrl.run import DEFAULT_RECIPE, builtin_recipe, builtin_recipes, read_recipe

    assert DEFAULT_RECIPE in builtin_recipes() and "tiny/sft_countdown.yaml" in builtin_recipes()
    raw = builtin_recipe(DEFAULT_RECIPE)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert read_recipe(path) == read_recipe(str(path)) == read_recipe(DEFAULT_RECIPE) == raw
    cfg = build_config(raw, registry=registry)
    assert build_config(read_recipe(cfg), registry=registry) == cfg
    with pytest.raises(ConfigError, match="tiny/countdown_dmpo.yaml"):  # the error lists what exists
        read_recipe("tiny/no_such_recipe.yaml")


def test_mapping_overrides_take_values_as_they_are(registry):
    from ddrl.run import assemble_run

    cfg = assemble_run(None, overrides={"model.architecture.d_model": 64, "task.operators": "+-",
                                        "eval.lengths": [8, 16]}, registry=registry)
    assert cfg.model.architecture.d_model == 64 and cfg.task.operators == "+-" and cfg.eval.lengths == [8, 16]


# ------------------------------------------------------------------------------------------------
# --help names no fixed list of components


@pytest.mark.parametrize("command", ["train", "sft", "sample"])
def test_help_texts_point_at_the_registered_components(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "countdown, sudoku" not in text  # before: `ddrl sft --help` listed two tasks as if they were all
    assert "ddrl plugins" in text


def test_pretrain_help_lists_the_shipped_pretraining_recipes():
    text = " ".join(invoke("pretrain", "--help").output.split())
    assert "tiny/pretrain_TASK.yaml" in text and "countdown" in text and "sudoku" in text
