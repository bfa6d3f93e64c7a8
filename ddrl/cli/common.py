"""What every CLI command shares: assembling a config from recipe + flags + ``--set``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import torch
from pydantic import ValidationError

from ddrl.config import COMPONENT_SECTIONS, RunConfig, apply_overrides, build_config, load_recipe
from ddrl.registry import Registry


def assemble_config(
    registry: Registry,
    recipe: Path | dict[str, Any] | None,
    names: dict[str, str | None],
    overrides: Iterable[str],
    sections: Iterable[str],
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """Recipe (if any) <- component-name flags <- ``extra`` field flags <- ``--set`` overrides.

    A flag that switches a section to another component drops the recipe's options for the old
    one (they would not validate against the new component's Config). A task switched by flag
    brings the components it needs (``Task.suggested_sections``, e.g. a token-only model for
    `ising`) in place of the recipe's, except where a flag names another component.
    """
    if isinstance(recipe, dict):
        raw: dict[str, Any] = copy.deepcopy(recipe)
    else:
        raw = load_recipe(recipe) if recipe is not None else {}
    switched = set()
    for section, name in names.items():
        if name is None:
            continue
        assert section in COMPONENT_SECTIONS
        current = raw.get(section)
        current_name = current.get("name") if isinstance(current, dict) else current
        if current_name != name:
            switched.add(section)
            raw[section] = {"name": name}
            if section == "objective" and names.get("estimator") is None:
                # a new objective without a named estimator gets the one it was published with
                preferred = getattr(registry.get("objectives", name), "preferred_estimator", None)
                if preferred is not None:
                    raw["estimator"] = {"name": preferred}
    if "task" in switched:
        _apply_task_suggestions(registry, raw, names, overrides)
    for key, value in (extra or {}).items():
        if value is None:
            continue
        section, field = key.split(".", 1)
        node = raw.setdefault(section, {})
        if isinstance(node, str):
            node = raw[section] = {"name": node}
        node[field] = value  # set directly: a path must not be re-parsed as YAML
    return build_config(raw, overrides, registry, sections)


def _apply_task_suggestions(
    registry: Registry, raw: dict[str, Any], names: dict[str, str | None], overrides: Iterable[str]
) -> None:
    """Replace the sections the (newly chosen) task suggests, unless a flag names another component."""
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


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
