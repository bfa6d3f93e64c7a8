"""Every shipped recipe validates against the registered components and round-trips through YAML."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from ddrl.testing import check_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


def test_recipes_exist_and_ship_inside_the_package():
    assert RECIPES, "no recipes found"
    shipped = importlib.resources.files("ddrl.recipes").joinpath("tiny/countdown_dmpo.yaml")
    assert shipped.is_file()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_validates_and_round_trips(path):
    check_recipe(path)  # header commands, validation against the registry, YAML round trip
