"""A run from a recipe: the one path from recipe + component names + overrides to a ``RunConfig``,
and to a trained policy.

``ddrl train``, ``ddrl sft`` and ``ddrl pretrain`` are this module behind flags, so Python and the
CLI build identical runs::

    import ddrl.run

    result = ddrl.run.train("tiny/countdown_dmpo.yaml", objective="diffu_grpo",
                            overrides={"train.max_steps": 20})
    config = ddrl.run.assemble_run("tiny/countdown_dmpo.yaml", names={"objective": "spg"})

is ``ddrl train --objective diffu_grpo --set train.max_steps=20`` and the config that
``ddrl train --objective spg`` trains. The rules of assembly (``assemble_run``):

* a component name that switches a section to another component drops the recipe's options for
  the old one (they would not validate against the new component's ``Config``);
* a switched objective without a named estimator brings the estimator it was published with
  (``Objective.preferred_estimator``); a recipe without an ``estimator`` section gets it too;
* a switched task brings the sections it needs (``Task.suggested_sections``, e.g. a token-only
  model for `ising`), except where a name picks another component;
* the run directory is the one given (``output_dir``, ``train.output_dir``), else the recipe's own,
  else ``runs/{model}-{task}-{objective}``; a recipe's directory that is itself that default for the
  recipe's model, task and objective (``runs/tiny-countdown-dmpo``) follows the run's names, so
  ``--objective spg`` on the default recipe writes to ``runs/tiny-countdown-spg``;
* resolving the config records what the components will really use: a model loaded from
  ``model.path`` records the checkpoint's architecture, not the recipe's defaults.
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, Union

import yaml
from pydantic import ValidationError

from ddrl.config import (
    COMPONENT_SECTIONS,
    ConfigError,
    Overrides,
    RunConfig,
    apply_overrides,
    build_config,
    load_recipe,
    override_items,
)
from ddrl.registry import Registry

if TYPE_CHECKING:
    from rich.console import Console

    from ddrl.training.trainer import Trainer, TrainResult

__all__ = [
    "DEFAULT_RECIPE",
    "Recipe",
    "assemble_run",
    "builtin_recipe",
    "builtin_recipes",
    "default_output_dir",
    "read_recipe",
    "train",
]

DEFAULT_RECIPE = "tiny/countdown_dmpo.yaml"
"""The recipe of ``ddrl train`` without ``--config``: DMPO on the shipped tiny Countdown model."""

RUN_NAME_SECTIONS = ("model", "task", "objective")  # what the default run directory names

Recipe = Union[str, Path, Mapping[str, Any], RunConfig, None]
"""A YAML file (``Path``, or a ``str`` naming an existing file), a built-in recipe name such as
``"tiny/countdown_dmpo.yaml"`` (``builtin_recipes()``), a raw dict of sections, a ``RunConfig``,
or None (``RunConfig``'s defaults)."""


# ------------------------------------------------------------------------------------------------
# recipes


def builtin_recipes() -> list[str]:
    """The recipes shipped with ddrl (``recipes/`` in the repository, ``ddrl.recipes`` installed)."""
    root = importlib.resources.files("ddrl.recipes")
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir() and not child.name.startswith(("_", ".")):
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                found.append(prefix + child.name)

    walk(root, "")
    return sorted(found)


def builtin_recipe(name: str) -> dict[str, Any]:
    """A recipe shipped with ddrl as a raw dict, e.g. ``builtin_recipe("tiny/countdown_dmpo.yaml")``."""
    resource = importlib.resources.files("ddrl.recipes").joinpath(name)
    if not resource.is_file():
        raise ConfigError(f"built-in recipe {name!r} not found; built-in recipes: {', '.join(builtin_recipes())}")
    try:
        raw = yaml.safe_load(resource.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"built-in recipe {name} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"built-in recipe {name} must be a mapping of sections")
    return raw


def read_recipe(recipe: Recipe) -> dict[str, Any]:
    """Any ``Recipe`` as a fresh raw dict of sections (validated later, by ``assemble_run``)."""
    if recipe is None:
        return {}
    if isinstance(recipe, RunConfig):
        return yaml.safe_load(recipe.to_yaml()) or {}
    if isinstance(recipe, Mapping):
        return copy.deepcopy(dict(recipe))
    if isinstance(recipe, Path) or Path(recipe).is_file():
        return load_recipe(recipe)
    return builtin_recipe(str(recipe))


def default_output_dir(model: str, task: str, objective: str) -> str:
    """``runs/{model}-{task}-{objective}`` (underscores as hyphens, as the shipped recipes write it)."""
    return "runs/" + "-".join(name.replace("_", "-") for name in (model, task, objective))


# ------------------------------------------------------------------------------------------------
# assembly


def assemble_run(
    recipe: Recipe = None,
    *,
    names: Mapping[str, str | None] | None = None,
    overrides: Overrides = (),
    extra: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    sections: Iterable[str] | None = None,
) -> RunConfig:
    """Recipe <- component ``names`` <- ``extra`` fields <- ``overrides``, resolved: the run
    ``ddrl train`` would build from the same recipe, flags and ``--set`` overrides.

    Args:
        recipe: see ``Recipe``.
        names: ``{section: component name}`` for the five component sections (``--objective`` ...);
            None values are ignored.
        overrides: ``["section.field=value", ...]`` (``--set``; values parsed as YAML) or
            ``{"section.field": value}``.
        extra: ``{"section.field": value}`` set before ``overrides`` (the CLI's field flags such as
            ``--model-path``, ``--output-dir``); None values are ignored.
        registry: where components come from (entry points by default).
        sections: the component sections to resolve to their typed ``Config`` (all five by default).
    """
    registry = registry or Registry()
    if not isinstance(overrides, Mapping):
        overrides = list(overrides)  # read more than once
    sections = None if sections is None else list(sections)
    named: dict[str, str] = {k: v for k, v in (names or {}).items() if v is not None}
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    for section in named:
        if section not in COMPONENT_SECTIONS:
            raise ConfigError(f"unknown component section {section!r}; sections: {', '.join(COMPONENT_SECTIONS)}")
    raw = read_recipe(recipe)
    recipe_run = _run_names(raw)
    recipe_dir = _section(raw, "train").get("output_dir")

    switched = set()
    for section, name in named.items():
        if _section(raw, section).get("name") != name:
            switched.add(section)
            raw[section] = {"name": name}
            if section == "objective" and "estimator" not in named:
                # a new objective without a named estimator gets the one it was published with
                preferred = getattr(registry.get("objectives", name), "preferred_estimator", None)
                if preferred is not None:
                    raw["estimator"] = {"name": preferred}
    if "task" in switched:
        _apply_task_suggestions(registry, raw, named, overrides)
    for key, value in extra.items():
        section, _, field = key.partition(".")
        if not field:
            raise ConfigError(f"{key!r} must name a section and a field, e.g. train.output_dir")
        node = raw.get(section)
        if not isinstance(node, dict):
            node = raw[section] = {} if node is None else {"name": node}
        node[field] = value  # set directly: a path must not be re-parsed as YAML

    given_dir = "train.output_dir" in extra or any(
        path == ["train", "output_dir"] for path, _, _ in override_items(overrides)
    )
    # the recipe's own directory unless it is the default of the recipe's model, task and objective
    # (then it follows the run's: `--objective spg` on the default recipe must not write into its dmpo run)
    if not given_dir and (recipe_dir is None or recipe_dir == default_output_dir(*recipe_run)):
        train = raw.get("train")
        run = _run_names(apply_overrides(raw, overrides))
        raw["train"] = {**(train if isinstance(train, dict) else {}), "output_dir": default_output_dir(*run)}
    return build_config(raw, overrides, registry, sections)


def _section(raw: dict[str, Any], section: str) -> dict[str, Any]:
    value = raw.get(section)
    if isinstance(value, str):
        return {"name": value}
    return value if isinstance(value, dict) else {}


def _run_names(raw: dict[str, Any]) -> tuple[str, str, str]:
    """(model, task, objective) names a raw recipe trains (``RunConfig``'s defaults where unnamed)."""
    return tuple(  # type: ignore[return-value]
        str(_section(raw, s).get("name") or RunConfig.model_fields[s].default.name) for s in RUN_NAME_SECTIONS
    )


def _apply_task_suggestions(
    registry: Registry, raw: dict[str, Any], names: Mapping[str, str], overrides: Overrides
) -> None:
    """Replace the sections the (newly chosen) task suggests, unless a name picks another component."""
    task_cls = registry.get("tasks", raw["task"]["name"])
    suggest = getattr(task_cls, "suggested_sections", None)
    if suggest is None:
        return
    try:  # the task's options as the run will see them (``--set task.L=3`` changes the sampler length)
        config = task_cls.Config.model_validate(apply_overrides(raw, overrides).get("task") or {})
    except ValidationError:
        return  # build_config reports it with the field names
    for section, values in suggest(config).items():
        named = names.get(section)
        if named is None or named == values.get("name"):
            raw[section] = copy.deepcopy(values)


# ------------------------------------------------------------------------------------------------
# the Python entry point


def train(
    recipe: Recipe = DEFAULT_RECIPE,
    *,
    objective: str | None = None,
    model: str | None = None,
    model_path: str | Path | None = None,
    task: str | None = None,
    sampler: str | None = None,
    estimator: str | None = None,
    overrides: Overrides = (),
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    registry: Registry | None = None,
    console: Console | None = None,
    callbacks: Sequence[Callable[[Trainer, int], dict[str, Any] | None]] = (),
) -> TrainResult:
    """Train what ``ddrl train`` trains with the same recipe, flags and ``--set`` overrides.

    ``recipe``: see ``Recipe`` (default: the built-in tiny Countdown DMPO recipe). ``resume``: continue
    the run in that directory; its recorded ``config.yaml`` is the recipe (``overrides`` still apply,
    e.g. a larger ``train.max_steps``). ``callbacks``: ``fn(trainer, step) -> dict | None`` after each
    optimizer step (see ``Trainer``). Returns the ``TrainResult``.
    """
    from ddrl.training.run_dir import read_run_config
    from ddrl.training.trainer import CONFIG_FILE, Trainer

    registry = registry or Registry()
    if resume is not None:
        base: Recipe = read_run_config(Path(resume), CONFIG_FILE)
        extra: dict[str, Any] = {"train.output_dir": str(resume)}
    else:
        base = recipe
        extra = {"train.output_dir": None if output_dir is None else str(output_dir),
                 "model.path": None if model_path is None else str(model_path)}
    names = {"objective": objective, "model": model, "task": task, "sampler": sampler, "estimator": estimator}
    config = assemble_run(base, names=names, overrides=overrides, extra=extra, registry=registry)
    trainer = Trainer(config, registry, resume=resume is not None, console=console, callbacks=callbacks)
    return trainer.train()
