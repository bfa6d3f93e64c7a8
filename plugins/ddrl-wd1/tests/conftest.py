"""Fixtures for ddrl-wd1's tests, built only through ddrl's public API (the registry)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would retry for tens of seconds

import pytest
from wd1_helpers import ab_policy as make_ab_policy

from ddrl.registry import Registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="session")
def ab_policy(registry):
    return make_ab_policy(registry)
