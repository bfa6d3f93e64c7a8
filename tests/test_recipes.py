"""Every shipped recipe validates against the registered components and round-trips through YAML."""

from __future__ import annotations

import importlib.resources
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
    text = path.read_text()
    assert text.startswith("#") and "ddrl train" in text.splitlines()[1], "a recipe starts with the command that runs it"
    config = build_config(load_recipe(path), registry=Registry())
    again = build_config(yaml.safe_load(dump_yaml(config)), registry=Registry())
    assert again == config
