"""The entry-point registry, exercised with real installed distributions.

Each test writes fake distributions (a ``*.dist-info`` directory next to an importable module) into
``tmp_path``, puts that directory on ``sys.path`` and lets ``Registry()`` discover them through
``importlib.metadata.entry_points()`` exactly as it discovers ddrl's own built-ins.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib
from importlib.metadata import version
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ddrl.config import build_config
from ddrl.registry import GROUPS, Registry, RegistryError
from ddrl.samplers.block import BlockSampler

BUILTINS = {
    "models": ["tiny"],
    "samplers": ["block", "ancestral"],
    "estimators": ["exact", "elbo", "one_step", "coupled"],
}

# Every fake module's name starts with this, so the fixture can forget them all afterwards.
FAKE_PREFIX = "ddrltest_"

HEALTHY_OBJECTIVE = '''
from pydantic import ConfigDict
from ddrl.config import ComponentConfig


class MyObjectiveConfig(ComponentConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "my_objective"
    alpha: float = 0.25


class MyObjective:
    Config = MyObjectiveConfig

    def __init__(self, config):
        self.config = config
'''

HEALTHY_REWARD = '''
def length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]
'''


def write_distribution(
    site: Path,
    name: str,
    version: str,
    entry_points: dict[str, dict[str, str]],
    modules: dict[str, str] | None = None,
) -> None:
    """An installed distribution as pip leaves it: ``<name>-<version>.dist-info`` + its modules."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = []
    for group, eps in entry_points.items():
        lines = "\n".join(f"{ep} = {target}" for ep, target in eps.items())
        sections.append(f"[{group}]\n{lines}\n")
    (info / "entry_points.txt").write_text("\n".join(sections))
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


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


@pytest.fixture
def healthy_plugin(site) -> Path:
    write_distribution(
        site, "ddrltest-objectives", "0.3.1",
        {"ddrl.objectives": {"my_objective": f"{FAKE_PREFIX}objective:MyObjective"}},
        {f"{FAKE_PREFIX}objective": HEALTHY_OBJECTIVE},
    )
    write_distribution(
        site, "ddrltest-rewards", "1.0",
        {"ddrl.rewards": {"length": f"{FAKE_PREFIX}reward:length_reward"}},
        {f"{FAKE_PREFIX}reward": HEALTHY_REWARD},
    )
    importlib.invalidate_caches()
    return site


def write_broken_plugin(site: Path, error: str) -> None:
    """A plugin whose module fails on import with ``error`` (a statement)."""
    write_distribution(
        site, "ddrltest-broken", "0.0.1",
        {"ddrl.samplers": {"broken_sampler": f"{FAKE_PREFIX}broken:BrokenSampler"}},
        {f"{FAKE_PREFIX}broken": f"{error}\n\nclass BrokenSampler:\n    pass\n"},
    )
    importlib.invalidate_caches()


# ------------------------------------------------------------------------------------------------
# built-ins


def test_builtins_are_discovered_through_entry_points_of_the_ddrl_distribution():
    registry = Registry()
    for group, names in BUILTINS.items():
        components = {c.name: c for c in registry.components(group)}
        for name in names:
            assert name in components, f"{group}/{name} missing: {sorted(components)}"
            component = components[name]
            assert component.distribution == "ddrl"
            assert component.builtin
            assert component.entry_point is not None  # found by discovery, not registered by hand
            assert component.target.startswith(f"ddrl.{group}.")


def test_builtins_load_without_problems():
    registry = Registry()
    assert registry.load_all() == []
    assert registry.get("samplers", "block") is BlockSampler
    assert registry.origin("samplers", "block").startswith("ddrl ")


# ------------------------------------------------------------------------------------------------
# third-party plugins


def test_third_party_component_appears_with_its_distribution_and_version(healthy_plugin):
    registry = Registry()
    component = {c.name: c for c in registry.components("objectives")}["my_objective"]
    assert component.distribution == "ddrltest-objectives"
    assert component.version == "0.3.1"
    assert not component.builtin
    assert registry.origin("objectives", "my_objective") == "ddrltest-objectives 0.3.1"

    cls = registry.get("objectives", "my_objective")
    assert cls.__name__ == "MyObjective"
    assert cls.__module__ == f"{FAKE_PREFIX}objective"
    assert cls.Config().alpha == 0.25
    # a plugin function (TRL-style reward) is returned as is
    assert registry.get("rewards", "length")(["q"], ["abc"]) == [3.0]


def test_third_party_config_is_validated_by_build_config(healthy_plugin):
    cfg = build_config(
        {"objective": {"name": "my_objective", "alpha": 0.5}}, registry=Registry(), sections=["objective"]
    )
    assert type(cfg.objective).__name__ == "MyObjectiveConfig"
    assert cfg.objective.alpha == 0.5


@pytest.mark.parametrize(
    "error, text",
    [
        ("raise RuntimeError('plugin exploded on import')", "RuntimeError: plugin exploded on import"),
        ("import ddrltest_no_such_dependency", "ddrltest_no_such_dependency"),
    ],
)
def test_broken_plugin_is_reported_and_never_stops_the_others(healthy_plugin, error, text):
    write_broken_plugin(healthy_plugin, error)
    registry = Registry()
    assert "broken_sampler" in registry.names("samplers")  # listed before it is imported

    problems = registry.load_all()
    assert len(problems) == 1
    problem = problems[0]
    assert (problem.group, problem.name, problem.distribution) == ("samplers", "broken_sampler", "ddrltest-broken")
    assert text in problem.message

    for group, names in BUILTINS.items():
        for name in names:
            assert registry.get(group, name) is not None
    assert registry.get("objectives", "my_objective").__name__ == "MyObjective"
    assert registry.get("rewards", "length") is not None
    for group in GROUPS:
        for c in registry.components(group):
            assert (c.error is None) == (c.name != "broken_sampler"), c

    with pytest.raises(RegistryError, match="ddrltest-broken") as info:
        registry.get("samplers", "broken_sampler")
    assert text in str(info.value)


def test_broken_plugin_fails_lazily_on_get_without_load_all(healthy_plugin):
    write_broken_plugin(healthy_plugin, "raise RuntimeError('late failure')")
    registry = Registry()
    with pytest.raises(RegistryError, match="'ddrltest-broken'.*late failure"):
        registry.get("samplers", "broken_sampler")
    assert registry.get("samplers", "block") is BlockSampler
    assert [p.distribution for p in registry.problems] == ["ddrltest-broken"]


def test_plugin_name_clash_does_not_shadow_the_builtin(site):
    # first on sys.path, so discovery sees the plugin before ddrl itself
    write_distribution(
        site, "ddrltest-clash", "2.0",
        {"ddrl.samplers": {"block": f"{FAKE_PREFIX}clash:Impostor"}},
        {f"{FAKE_PREFIX}clash": "class Impostor:\n    pass\n"},
    )
    importlib.invalidate_caches()
    registry = Registry()
    assert registry.get("samplers", "block") is BlockSampler
    assert registry.origin("samplers", "block").startswith("ddrl ")
    assert f"{FAKE_PREFIX}clash" not in sys.modules  # the impostor is never even imported

    clashes = [p for p in registry.load_all() if p.name == "block"]
    assert len(clashes) == 1
    assert clashes[0].distribution == "ddrltest-clash"
    assert "ddrl (ddrl.samplers.block:BlockSampler)" in clashes[0].message
    assert "ddrltest-clash" in clashes[0].message


def test_unknown_name_lists_available_names_and_the_closest_match():
    with pytest.raises(RegistryError) as info:
        Registry().get("samplers", "blok")
    message = str(info.value)
    assert "unknown sampler 'blok'" in message
    assert "did you mean 'block'?" in message
    assert "available:" in message and "ancestral" in message and "block" in message


def test_unknown_group_names_the_groups():
    with pytest.raises(RegistryError, match="unknown group 'sampler'.*samplers"):
        Registry().get("sampler", "block")


# ------------------------------------------------------------------------------------------------
# the real `ddrl plugins` command in a fresh interpreter


def test_plugins_command_lists_third_party_components_and_problems(healthy_plugin):
    write_broken_plugin(healthy_plugin, "raise RuntimeError('plugin exploded on import')")
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(healthy_plugin), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "ddrl.cli.app", "plugins"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    def row(name: str) -> str:
        found = [line for line in lines if f" {name} " in line]
        assert found, f"no row for {name} in:\n{result.stdout}"
        return found[0]

    assert "ddrltest-objectives 0.3.1" in row("my_objective")
    assert "ddrltest-rewards 1.0" in row("length")
    for names in BUILTINS.values():
        for name in names:
            assert f"ddrl {version('ddrl')}" in row(name) and " ok " in row(name)
    assert "plugin problem(s)" in result.stdout
    problem_lines = [line for line in lines if line.startswith("  ddrltest-broken")]
    assert problem_lines, result.stdout
    assert "samplers/broken_sampler" in problem_lines[0]
    assert "plugin exploded on import" in " ".join(lines[lines.index(problem_lines[0]):])


def test_plugins_command_survives_an_error_text_that_looks_like_markup(site):
    from typer.testing import CliRunner

    from ddrl.cli.app import app

    write_broken_plugin(site, "raise RuntimeError('needs [/opt/x] mounted')")
    result = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "needs [/opt/x] mounted" in result.output
