"""Task tests run offline: a Hugging Face lookup must fail at once, never retry."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """The directory of the small hand-written data files."""
    return FIXTURES
