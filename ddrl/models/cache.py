"""Key/value caches for bidirectional masked diffusion models (the `fast` sampler, docs/samplers.md).

Under bidirectional attention every position's keys and values depend on every other position,
so a cache is an *approximation* (Fast-dLLM): keys/values computed on an earlier canvas are reused
while a window of the canvas is recomputed. Two layouts exist:

* **prefix cache**: ``KVCache`` covers positions ``[0, start)``; the window is ``[start, T)``
  (the current block and everything after it).
* **dual cache**: ``KVCache`` covers all ``T`` positions; the window ``[start, start+S)`` is the
  current block; its cached entries are replaced by the fresh ones for the attention.

A policy that supports caching implements (see ``MaskedDiffusionPolicy``)::

    logits, cache = policy.forward_cache(input_ids [B, T], attention_mask [B, T] | None)
    logits_window = policy.forward_window(window_ids [B, S], start, cache, attention_mask [B, T] | None)

where ``attention_mask`` always describes the whole canvas ``[B, T]`` (left padding) and positions
(rotary phases) are those of the whole canvas. With a cache computed on the *current* canvas,
``forward_window`` equals ``forward`` on the window's positions up to float rounding: that is the
test every implementation must pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Per-layer keys and values ``[B, H_kv, T_cached, head_dim]`` (after rotary embedding)."""

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def length(self) -> int:
        """Number of cached positions ``T_cached``."""
        return 0 if not self.keys else int(self.keys[0].shape[2])

    def truncate(self, length: int) -> KVCache:
        """The first ``length`` positions (a prefix cache), as views."""
        return KVCache([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values])

    def select(self, rows: Tensor) -> KVCache:
        """The cache of a subset of batch rows."""
        return KVCache([k[rows] for k in self.keys], [v[rows] for v in self.values])


def splice(cached: Tensor, fresh: Tensor, start: int) -> Tensor:
    """Keys (or values) to attend to: the cache with ``fresh`` placed at ``[start, start+S)``.

    ``cached [B, H, T_c, d]`` with ``T_c == start`` (prefix cache: ``fresh`` is appended) or
    ``T_c >= start + S`` (dual cache: ``fresh`` replaces that slice). Returns ``[B, H, T, d]``.
    """
    s = fresh.shape[2]
    if cached.shape[2] == start:
        return torch.cat([cached, fresh], dim=2)
    if cached.shape[2] < start + s:
        raise ValueError(f"cache of {cached.shape[2]} positions cannot hold a window [{start}, {start + s})")
    return torch.cat([cached[:, :, :start], fresh, cached[:, :, start + s :]], dim=2)
