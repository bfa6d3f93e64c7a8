"""Randomness keyed by what it is for, so runs repeat and resume exactly.

Every random draw in a run comes from a generator seeded by (run seed, purpose, step, chunk ...).
Nothing depends on how many draws happened before, on which process does the work, or on
whether the run was interrupted: the same keys always give the same numbers.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any keys (stable across Python processes)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def keyed_generator(seed: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by ``derive_seed(seed, *keys)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))
