"""pytest fixtures for plugin test suites; import them into a ``conftest.py``::

    from ddrl.testing.fixtures import ab_policy, registry  # noqa: F401

Importing this module also sets ``HF_HUB_OFFLINE=1``: no test may wait on the Hugging Face hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from ddrl.models.base import MaskedDiffusionPolicy  # noqa: E402
from ddrl.registry import Registry  # noqa: E402
from ddrl.testing.components import text_policy  # noqa: E402


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The entry-point registry, as a run sees it."""
    return Registry()


@pytest.fixture(scope="session")
def ab_policy(registry: Registry) -> MaskedDiffusionPolicy:
    """``text_policy``: the tiny model over {a, b} (a = 5, b = 6, mask 1, EOS 3, BOS 2)."""
    return text_policy(registry)
