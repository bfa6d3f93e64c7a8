"""Every shipped recipe validates against the registered components and round-trips through YAML."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest
import yaml

from ddrl.config import build_config, dump_yaml, load_recipe
from ddrl.registry import Registry

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


def test_recipes_exist_and_ship_inside_the_package():
    assert RECIPES, "no recipes found"
    shipped = importlib.resources.files("ddrl.recipes").joinpath("tiny/countdown_dmpo.yaml")
    assert shipped.is_file()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_validates_and_round_trips(path):
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    commands = [line for line in header if re.match(r"^#\s+ddrl (train|pretrain|sft)\b", line)]
    assert len(commands) >= 2, "a recipe's header gives the command that runs it and an override example"
    config = build_config(load_recipe(path), registry=Registry())
    again = build_config(yaml.safe_load(dump_yaml(config)), registry=Registry())
    assert again == config
