"""``ddrl.config``: recipes, overrides, typed component sections and the errors a user sees."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import textwrap

import pytest
import yaml

from ddrl.cli.common import assemble_config
from ddrl.config import (
    ComponentConfig,
    ConfigError,
    EvalConfig,
    TrainConfig,
    apply_overrides,
    build_config,
    dump_yaml,
    parse_override,
)
from ddrl.estimators.elbo import ElboConfig
from ddrl.models.tiny import TinyArchitecture, TinyConfig
from ddrl.registry import Registry, RegistryError
from ddrl.samplers.ancestral import AncestralSamplerConfig
from ddrl.samplers.block import BlockSamplerConfig

SECTIONS = ["model", "sampler", "estimator"]

RECIPE = """\
model:
  name: tiny
  seed: 3
  architecture: {d_model: 64, n_layers: 2, n_heads: 2}
sampler:
  name: block
  max_completion_length: 64
  block_length: 16
  steps: 32
  temperature: 0.5
estimator:
  name: elbo
  num_samples: 2
objective: dmpo
task: {name: countdown}
train:
  max_steps: 3
  learning_rate: 1.0e-4
  lr_scheduler_type: cosine
eval:
  lengths: [64, 128]
logging:
  report_to: [jsonl]
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def config_error(registry: Registry, *overrides: str, raw: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(raw or {}, overrides, registry=registry, sections=SECTIONS)
    return str(info.value)


# ------------------------------------------------------------------------------------------------
# round trip


def test_recipe_round_trips_through_typed_configs(registry):
    raw = yaml.safe_load(RECIPE)
    cfg = build_config(raw, registry=registry, sections=SECTIONS)

    assert isinstance(cfg.model, TinyConfig)
    assert isinstance(cfg.sampler, BlockSamplerConfig)
    assert isinstance(cfg.estimator, ElboConfig) and cfg.estimator.num_samples == 2
    assert type(cfg.objective) is ComponentConfig  # not in `sections`: left unresolved

    dumped = yaml.safe_load(dump_yaml(cfg))
    # every default of the typed Config is written out, nested ones included
    assert dumped["model"] == TinyConfig(
        seed=3, architecture=TinyArchitecture(d_model=64, n_layers=2, n_heads=2)
    ).model_dump(mode="json")
    assert dumped["model"]["architecture"]["ffn_hidden"] == 704
    assert dumped["sampler"]["remasking"] == "low_confidence"
    assert dumped["objective"] == {"name": "dmpo"}
    assert dumped["train"] == TrainConfig(max_steps=3, learning_rate=1e-4, lr_scheduler_type="cosine").model_dump(
        mode="json"
    )
    assert dumped["eval"] == EvalConfig(lengths=[64, 128]).model_dump(mode="json")
    # the recipe's own values survive
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert dumped[section][key] == value, (section, key)

    again = build_config(dumped, registry=registry, sections=SECTIONS)
    assert yaml.safe_load(dump_yaml(again)) == dumped
    assert again == cfg


# ------------------------------------------------------------------------------------------------
# error messages


def test_bad_literal_names_the_field_the_value_and_the_choices(registry):
    message = config_error(registry, "sampler.remasking=foo")
    assert "sampler.remasking='foo'" in message
    assert "'low_confidence'" in message and "'random'" in message


def test_constraint_violation_names_the_field_the_value_and_the_bound(registry):
    message = config_error(registry, "train.learning_rate=-1")
    assert "train.learning_rate=-1" in message
    assert "greater than 0" in message


def test_misspelt_scheduler_lists_the_schedulers(registry):
    message = config_error(registry, "train.lr_scheduler_type=linearr")
    assert "train.lr_scheduler_type='linearr'" in message
    for choice in ("'constant'", "'constant_with_warmup'", "'linear'", "'cosine'"):
        assert choice in message


def test_unknown_train_field_suggests_the_closest_and_lists_allowed(registry):
    message = config_error(registry, "train.max_step=2")
    assert "train.max_step: unknown field" in message
    assert "did you mean 'max_steps'?" in message
    allowed = message.split("allowed:", 1)[1]
    for field in ("max_steps", "learning_rate", "num_generations", "per_device_train_batch_size"):
        assert field in allowed


def test_unknown_component_field_suggests_the_closest_of_that_component(registry):
    message = config_error(registry, "sampler.temprature=0.5")
    assert "sampler.temprature: unknown field of sampler 'block'" in message
    assert "did you mean 'temperature'?" in message
    assert "remasking" in message.split("allowed:", 1)[1]


def test_unknown_nested_component_field_lists_the_nested_fields(registry):
    message = config_error(registry, "model.architecture.d_modle=64")
    assert "model.architecture.d_modle: unknown field" in message
    assert "did you mean 'd_model'?" in message
    assert "ffn_hidden" in message.split("allowed:", 1)[1]


def test_unknown_section_lists_the_sections(registry):
    message = config_error(registry, "foo.bar=1")
    assert "unknown section 'foo'" in message
    for section in ("model", "task", "sampler", "estimator", "objective", "train", "eval", "logging"):
        assert section in message.split("available:", 1)[1]


def test_cross_field_validator_error_names_the_section(registry):
    message = config_error(registry, "sampler.max_completion_length=30", "sampler.block_length=8")
    assert message.splitlines()[1].strip().startswith("sampler")
    assert "max_completion_length (30) must be a multiple of block_length (8)" in message


def test_override_without_equals_or_field_says_how_it_should_look():
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("train.max_steps")
    with pytest.raises(ConfigError, match="must name a section and a field"):
        parse_override("max_steps=2")


# ------------------------------------------------------------------------------------------------
# overrides


def test_override_values_are_parsed_as_yaml(registry):
    cfg = build_config(
        {"model": {"name": "tiny", "path": "/somewhere"}},
        ["train.max_steps=2", "eval.lengths=[64, 128]", "model.path=null", "train.bf16=true"],
        registry=registry,
        sections=["model"],
    )
    assert cfg.train.max_steps == 2 and isinstance(cfg.train.max_steps, int)
    assert cfg.eval.lengths == [64, 128]
    assert cfg.model.path is None
    assert cfg.train.bf16 is True


def test_later_overrides_win():
    cfg = build_config({"train": {"max_steps": 7}}, ["train.max_steps=2", "train.max_steps=5"])
    assert cfg.train.max_steps == 5


def test_nested_override_reaches_a_nested_field(registry):
    cfg = build_config({}, ["model.architecture.d_model=64"], registry=registry, sections=["model"])
    assert cfg.model.architecture.d_model == 64
    assert cfg.model.architecture.n_layers == TinyArchitecture().n_layers


def test_overrides_do_not_mutate_the_recipe():
    raw = {"train": {"max_steps": 7}}
    out = apply_overrides(raw, ["train.max_steps=2"])
    assert raw == {"train": {"max_steps": 7}}
    assert out == {"train": {"max_steps": 2}}


def test_string_shorthand_becomes_a_named_section():
    cfg = build_config({"objective": "dmpo", "sampler": "ancestral"})
    assert cfg.objective.model_dump() == {"name": "dmpo"}
    assert cfg.sampler.model_dump() == {"name": "ancestral"}


def test_section_without_name_keeps_the_default_component(registry):
    cfg = build_config({"sampler": {"steps": 4, "max_completion_length": 8, "block_length": 8}},
                       registry=registry, sections=["sampler"])
    assert isinstance(cfg.sampler, BlockSamplerConfig)
    assert cfg.sampler.steps == 4


def test_override_on_a_shorthand_section_extends_it():
    cfg = build_config({"objective": "dmpo", "model": "tiny"}, ["objective.alpha=0.1", "model.architecture.d_model=64"])
    assert cfg.objective.model_dump() == {"name": "dmpo", "alpha": 0.1}
    assert cfg.model.model_dump()["architecture"] == {"d_model": 64}


def test_unknown_component_name_suggests_the_closest(registry):
    with pytest.raises(RegistryError, match="unknown sampler 'blok'; did you mean 'block'\\?"):
        build_config({"sampler": {"name": "blok"}}, registry=registry, sections=["sampler"])
    with pytest.raises(RegistryError, match="did you mean 'block'\\?"):
        build_config({}, ["sampler.name=blok"], registry=registry, sections=["sampler"])


# ------------------------------------------------------------------------------------------------
# assemble_config (what every CLI command does)


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            model: {name: tiny, seed: 5}
            sampler: {name: block, max_completion_length: 8, block_length: 8, steps: 4, remasking: random}
            train: {max_steps: 9}
            """
        )
    )
    return path


def test_switching_component_by_flag_drops_the_old_components_options(registry, recipe_file):
    cfg = assemble_config(registry, recipe_file, {"sampler": "ancestral", "model": None}, [], ["model", "sampler"])
    assert isinstance(cfg.sampler, AncestralSamplerConfig)
    assert cfg.sampler.max_completion_length == AncestralSamplerConfig().max_completion_length  # not 8
    assert cfg.model.seed == 5  # untouched sections keep the recipe's options
    assert cfg.train.max_steps == 9


def test_naming_the_recipes_own_component_keeps_its_options(registry, recipe_file):
    cfg = assemble_config(registry, recipe_file, {"sampler": "block"}, [], ["sampler"])
    assert cfg.sampler.remasking == "random" and cfg.sampler.steps == 4


def test_extra_field_flags_are_set_verbatim_and_overrides_come_last(registry, recipe_file):
    cfg = assemble_config(
        registry, recipe_file, {"model": "tiny"}, ["model.seed=6"], ["model"],
        extra={"model.path": "/tmp/a: b", "model.dtype": None},
    )
    assert cfg.model.path == "/tmp/a: b"  # YAML would have read a mapping {'/tmp/a': 'b'}
    assert cfg.model.seed == 6
    assert cfg.model.dtype == "float32"  # None means "flag not given"


def test_extra_field_flags_extend_a_shorthand_section(registry, tmp_path):
    recipe = tmp_path / "short.yaml"
    recipe.write_text("model: tiny\n")
    cfg = assemble_config(registry, recipe, {}, [], ["model"], extra={"model.path": "/x"})
    assert isinstance(cfg.model, TinyConfig) and cfg.model.path == "/x"


def test_missing_recipe_names_the_path(registry, tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        assemble_config(registry, tmp_path / "nope.yaml", {}, [], [])
