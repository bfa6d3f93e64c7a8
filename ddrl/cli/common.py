"""What every CLI command shares: assembling a config from recipe + flags + ``--set``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import torch

from ddrl.config import COMPONENT_SECTIONS, RunConfig, build_config, load_recipe
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
    one (they would not validate against the new component's Config).
    """
    if isinstance(recipe, dict):
        raw: dict[str, Any] = copy.deepcopy(recipe)
    else:
        raw = load_recipe(recipe) if recipe is not None else {}
    for section, name in names.items():
        if name is None:
            continue
        assert section in COMPONENT_SECTIONS
        current = raw.get(section)
        current_name = current.get("name") if isinstance(current, dict) else current
        if current_name != name:
            raw[section] = {"name": name}
            if section == "objective" and names.get("estimator") is None:
                # a new objective without a named estimator gets the one it was published with
                preferred = getattr(registry.get("objectives", name), "preferred_estimator", None)
                if preferred is not None:
                    raw["estimator"] = {"name": preferred}
    for key, value in (extra or {}).items():
        if value is None:
            continue
        section, field = key.split(".", 1)
        node = raw.setdefault(section, {})
        if isinstance(node, str):
            node = raw[section] = {"name": node}
        node[field] = value  # set directly: a path must not be re-parsed as YAML
    return build_config(raw, overrides, registry, sections)


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
