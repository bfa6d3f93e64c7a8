"""A broken plugin is reported with its distribution's name, and everything else keeps working.

Each test installs throw-away distributions (a real ``*.dist-info`` directory next to a module, in
a temporary directory on ``sys.path``, written by ``tests/test_registry.py``'s helper) and goes
through the same discovery, lookup and build paths a user's run takes.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import importlib
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import build_config
from ddrl.contracts import PluginContractError
from ddrl.registry import Registry, RegistryError
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig
from tests.test_registry import BUILTINS, FAKE_PREFIX, write_distribution

IMPORTS = "import torch\nfrom ddrl.batch import SequenceBatch\nfrom ddrl.samplers.base import SampleOutput\n"

HEALTHY_SAMPLER = IMPORTS + '''
from ddrl.samplers.block import BlockSampler


class CopySampler(BlockSampler):
    """The block sampler under another name: every output check must let it through."""
'''

SHORT_SAMPLER = IMPORTS + '''
from ddrl.samplers.block import BlockSampler


class ShortSampler(BlockSampler):
    """Returns one completion token too few."""

    def sample(self, policy, prompt_ids, prompt_mask=None, **kwargs):
        b = prompt_ids.shape[0]
        completions = torch.zeros(b, self.completion_length - 1, dtype=torch.long)
        return SampleOutput(SequenceBatch.from_parts(prompt_ids, completions))
'''

EXPLODING_SAMPLER = IMPORTS + '''
from ddrl.samplers.block import BlockSampler


class ExplodingSampler(BlockSampler):
    def sample(self, policy, prompt_ids, prompt_mask=None, **kwargs):
        raise RuntimeError("sampler ran out of ideas")
'''

LOOSE_SAMPLER = '''
from ddrl.samplers.base import SamplerConfig


class LooseSampler:
    """Duck-typed: has every method, but does not derive from Sampler."""

    Config = SamplerConfig

    def __init__(self, config):
        self.config = config

    @classmethod
    def from_config(cls, config):
        return cls(config)

    def sample(self, policy, prompt_ids, prompt_mask=None, **kwargs):
        raise AssertionError("never reached")
'''

OBJECTIVE_WITHOUT_LOSS = '''
from ddrl.objectives.base import Objective, ObjectiveConfig


class HalfObjectiveConfig(ObjectiveConfig):
    name: str = "half"


class HalfObjective(Objective):
    Config = HalfObjectiveConfig

    def prepare(self, rollout, ctx):
        return {}
'''

TASK_WITH_BAD_LOAD = '''
from ddrl.tasks.base import Example, Task, TaskConfig


class BadTaskConfig(TaskConfig):
    name: str = "bad_task"


class BadTask(Task):
    Config = BadTaskConfig
    default_rewards = ("countdown_toy_correctness",)

    def load(self, split):
        return {"1+1": "2"}  # a mapping, not a list of Examples

    def format_prompt(self, example):
        return example.question

    def score(self, example, completion):
        return {"accuracy": 0.0}
'''

MODEL_WITH_BAD_MASK = '''
from ddrl.models.tiny import TinyPolicy


class OffByOnePolicy(TinyPolicy):
    @property
    def mask_token_id(self):
        return self.vocab_size  # one past the last logit
'''

REWARDS = '''
def without_columns(prompts, completions):
    return [0.0] * len(completions)


def one_value(prompts, completions, **columns):
    return [1.0]


class RewardClass:
    def __init__(self, prompts, completions, **columns):
        pass
'''


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """An empty directory on ``sys.path``; fake modules imported from it are forgotten afterwards."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    for module in [m for m in sys.modules if m.startswith(FAKE_PREFIX)]:
        del sys.modules[module]
    importlib.invalidate_caches()


def install(site: Path, dist: str, group: str, entries: dict[str, str], source: str) -> str:
    """One distribution ``dist`` with one module registering ``{name: attribute}`` in ``group``."""
    module = f"{FAKE_PREFIX}{dist.replace('-', '_')}"
    targets = {name: f"{module}:{attr}" for name, attr in entries.items()}
    write_distribution(site, dist, "0.1", {f"ddrl.{group}": targets}, {module: source})
    importlib.invalidate_caches()
    return module


def assert_builtins_work(registry: Registry) -> None:
    """Every built-in still resolves, and one is built and used."""
    for group, names in BUILTINS.items():
        for name in names:
            assert registry.get(group, name) is not None
    sampler = registry.build("samplers", BlockSamplerConfig(max_completion_length=2, block_length=2, steps=2))
    assert type(sampler) is BlockSampler


def invoke_plugins() -> str:
    result = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # undo rich's wrapping


def sampler_config(name: str, length: int = 3) -> BlockSamplerConfig:
    return BlockSamplerConfig(name=name, max_completion_length=length, block_length=length, steps=length)


PROMPTS = torch.tensor([[0, 1], [2, 0]])


# ------------------------------------------------------------------------------------------------
# discovery: failed imports and name clashes


def test_plugin_that_raises_on_import_is_named_and_the_rest_of_its_group_still_builds(site):
    install(site, "ddrltest-explodes", "samplers", {"explodes": "Whatever"}, "raise ImportError('needs libfoo.so')\n")
    install(site, "ddrltest-copy", "samplers", {"copy_block": "CopySampler"}, HEALTHY_SAMPLER)
    registry = Registry()

    with pytest.raises(RegistryError, match=r"'explodes' from distribution 'ddrltest-explodes'.*needs libfoo\.so"):
        registry.build("samplers", sampler_config("explodes"))
    assert_builtins_work(registry)
    assert type(registry.build("samplers", sampler_config("copy_block"))).__name__ == "CopySampler"
    assert [p.distribution for p in registry.check_all()] == ["ddrltest-explodes"]
    assert "ddrltest-explodes samplers/explodes: failed to import" in invoke_plugins()


def test_name_clash_with_a_builtin_keeps_the_builtin_and_reports_the_plugin_as_shadowed(site):
    module = install(site, "ddrltest-shadow", "objectives", {"dmpo": "Impostor"}, "class Impostor:\n    pass\n")
    registry = Registry()

    assert registry.get("objectives", "dmpo").__module__ == "ddrl.objectives.dmpo"
    assert registry.origin("objectives", "dmpo").startswith("ddrl ")
    (problem,) = registry.check_all()
    assert (problem.distribution, problem.group, problem.name) == ("ddrltest-shadow", "objectives", "dmpo")
    assert f"{module}:Impostor is ignored: built-ins always win" in problem.message
    assert "ddrl (ddrl.objectives.dmpo:DMPO)" in problem.message
    assert_builtins_work(registry)
    assert "ddrltest-shadow objectives/dmpo: name 'dmpo'" in invoke_plugins()


def test_name_registered_by_two_plugins_is_refused_naming_both_distributions(site):
    install(site, "ddrltest-first", "samplers", {"twin": "CopySampler", "first_only": "CopySampler"}, HEALTHY_SAMPLER)
    install(site, "ddrltest-second", "samplers", {"twin": "CopySampler"}, HEALTHY_SAMPLER)
    registry = Registry()

    with pytest.raises(RegistryError, match="several plugins") as info:
        registry.get("samplers", "twin")
    assert "ddrltest-first" in str(info.value) and "ddrltest-second" in str(info.value)
    assert "uninstall all but one" in str(info.value)
    assert registry.get("samplers", "first_only").__name__ == "CopySampler"  # the rest of ddrltest-first works
    assert_builtins_work(registry)
    (problem,) = registry.check_all()
    assert problem.name == "twin" and "both" in problem.message
    assert "ddrltest-first" in problem.message and "ddrltest-second" in problem.message
    assert "ambiguous: also registered by" in invoke_plugins()


# ------------------------------------------------------------------------------------------------
# the interface, checked when a component is built (or a reward looked up)


def test_objective_without_loss_fails_at_build_naming_the_method_and_distribution(site):
    install(site, "ddrltest-half", "objectives", {"half": "HalfObjective"}, OBJECTIVE_WITHOUT_LOSS)
    registry = Registry()
    config = build_config({"objective": {"name": "half"}}, registry=registry, sections=["objective"]).objective

    with pytest.raises(PluginContractError, match=r"'half' from distribution 'ddrltest-half'.*does not implement loss"):
        registry.build("objectives", config)
    (problem,) = registry.check_all()
    assert problem.distribution == "ddrltest-half" and "does not implement loss" in problem.message
    assert_builtins_work(registry)
    output = invoke_plugins()
    assert "ddrltest-half objectives/half:" in output and "does not implement loss" in output


def test_class_that_does_not_derive_from_the_interface_fails_at_build(site):
    install(site, "ddrltest-loose", "samplers", {"loose": "LooseSampler"}, LOOSE_SAMPLER)
    registry = Registry()

    with pytest.raises(PluginContractError) as info:
        registry.build("samplers", sampler_config("loose"))
    message = str(info.value)
    assert "'loose' from distribution 'ddrltest-loose'" in message
    assert "does not derive from ddrl.samplers.base.Sampler" in message
    assert "class LooseSampler(Sampler)" in message  # says what to write
    assert_builtins_work(registry)


def test_policy_whose_mask_id_is_outside_its_vocabulary_fails_at_build(site):
    install(site, "ddrltest-offbyone", "models", {"off_by_one": "OffByOnePolicy"}, MODEL_WITH_BAD_MASK)
    registry = Registry()
    small = {"d_model": 8, "n_layers": 1, "n_heads": 1, "ffn_hidden": 8}
    config = build_config(
        {"model": {"name": "off_by_one", "architecture": small}}, registry=registry, sections=["model"]
    ).model

    with pytest.raises(PluginContractError, match=r"'ddrltest-offbyone'.*mask_token_id \d+ is not a token id"):
        registry.build("models", config)


@pytest.mark.parametrize(
    "name, text",
    [
        ("without_columns", "takes no **columns"),
        ("reward_class", "expected a function"),
    ],
)
def test_reward_with_the_wrong_shape_fails_at_lookup(site, name, text):
    install(site, "ddrltest-rewards", "rewards",
            {"without_columns": "without_columns", "reward_class": "RewardClass", "one_value": "one_value"}, REWARDS)
    registry = Registry()
    with pytest.raises(PluginContractError, match=f"'{name}' from distribution 'ddrltest-rewards'") as info:
        registry.get("rewards", name)
    assert text in str(info.value)
    assert registry.get("rewards", "countdown_toy_correctness") is not None


def test_every_builtin_meets_its_interface():
    registry = Registry()
    problems = [p for p in registry.check_all() if p.distribution == "ddrl"]
    assert problems == []
    builtins = [c for group in BUILTINS for c in registry.components(group) if c.builtin]
    assert builtins and all(c.obj is not None for c in builtins)  # every one was imported and checked


# ------------------------------------------------------------------------------------------------
# outputs, checked where they are used


def test_sampler_output_of_the_wrong_shape_is_reported_when_used(site, token_policy):
    install(site, "ddrltest-short", "samplers", {"short": "ShortSampler"}, SHORT_SAMPLER)
    sampler = Registry().build("samplers", sampler_config("short", length=3))

    with pytest.raises(PluginContractError) as info:
        sampler.sample(token_policy, PROMPTS)
    message = str(info.value)
    assert "'short' from distribution 'ddrltest-short'" in message
    assert "completion_ids of shape [2, 2]; expected [B, L] = [2, 3]" in message


def test_reward_returning_the_wrong_number_of_values_is_reported_when_called(site):
    install(site, "ddrltest-rewards", "rewards", {"one_value": "one_value"}, REWARDS)
    reward = Registry().get("rewards", "one_value")
    assert reward(["q"], ["a"]) == [1.0]
    with pytest.raises(PluginContractError, match=r"'ddrltest-rewards'.*returned 1 values for 2 completions"):
        reward(["q", "q"], ["a", "b"])


def test_task_whose_load_returns_the_wrong_type_is_reported_when_its_split_is_read(site):
    install(site, "ddrltest-badtask", "tasks", {"bad_task": "BadTask"}, TASK_WITH_BAD_LOAD)
    registry = Registry()
    config = build_config({"task": {"name": "bad_task"}}, registry=registry, sections=["task"]).task
    task = registry.build("tasks", config)
    with pytest.raises(PluginContractError) as info:
        task.split("train")
    assert "task 'bad_task' from distribution 'ddrltest-badtask'" in str(info.value)
    assert "load() returned dict; expected a list of ddrl.tasks.base.Example" in str(info.value)


@pytest.mark.slow
def test_task_whose_load_returns_the_wrong_type_stops_ddrl_train_with_exit_2(site, tmp_path):
    install(site, "ddrltest-badtask", "tasks", {"bad_task": "BadTask"}, TASK_WITH_BAD_LOAD)
    args = ["train", "--task", "bad_task", "--model", "tiny", "--output-dir", str(tmp_path / "run"),
            "--set", "train.max_steps=1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "task 'bad_task' from distribution 'ddrltest-badtask'" in output
    assert "load() returned dict" in output


def test_an_exception_inside_a_plugin_carries_a_note_naming_its_distribution(site, token_policy):
    install(site, "ddrltest-exploding", "samplers", {"exploding": "ExplodingSampler"}, EXPLODING_SAMPLER)
    sampler = Registry().build("samplers", sampler_config("exploding"))
    with pytest.raises(RuntimeError, match="sampler ran out of ideas") as info:  # its own type, unchanged
        sampler.sample(token_policy, PROMPTS)
    assert any("ddrltest-exploding" in note and "sample()" in note for note in info.value.__notes__)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_correct_plugin_passes_its_output_checks_unchanged(site, token_policy, temperature):
    install(site, "ddrltest-copy", "samplers", {"copy_block": "CopySampler"}, HEALTHY_SAMPLER)
    config = sampler_config("copy_block").model_copy(update={"temperature": temperature})
    plugin = Registry().build("samplers", config)
    got = plugin.sample(token_policy, PROMPTS, generator=torch.Generator().manual_seed(5))
    want = BlockSampler(config).sample(token_policy, PROMPTS, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got.completion_ids, want.completion_ids)
    assert torch.equal(got.unmask_step, want.unmask_step)


def test_a_deep_copy_of_a_checked_plugin_runs_its_own_method(site, token_policy):
    install(site, "ddrltest-copy", "samplers", {"copy_block": "CopySampler"}, HEALTHY_SAMPLER)
    original = Registry().build("samplers", sampler_config("copy_block", length=3))
    clone = copy.deepcopy(original)
    clone.config = sampler_config("copy_block", length=2)

    assert clone.sample(token_policy, PROMPTS).completion_ids.shape == (2, 2)
    assert original.sample(token_policy, PROMPTS).completion_ids.shape == (2, 3)
