"""`AdapterFreeView`: a LoRA policy's base weights, used as the RL reference without a copy.

DMPO's published reference is "the base model" = the policy with its LoRA adapters disabled.
Instead of a deep copy (twice the memory of an 8B model), a LoRA policy's ``frozen_reference()``
is this view: every call runs the very same modules with the adapters off.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.models.cache import KVCache


class AdapterPolicy(Protocol):
    """A policy whose LoRA adapters can be switched off for a block (``HFDiffusionPolicy``)."""

    tokenizer: Any
    mask_token_id: int
    vocab_size: int
    device: torch.device
    dtype: torch.dtype

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, **scoring: Any) -> Tensor: ...

    def adapters_disabled(self) -> AbstractContextManager[None]: ...

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]: ...

    def forward_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None
    ) -> Tensor: ...


class AdapterFreeView(MaskedDiffusionPolicy):
    """A LoRA policy's base model as a reference policy: every call runs the policy with its
    adapters disabled and without gradients. It holds no parameters of its own (the policy is
    kept outside the module tree), so ``.to()`` / ``.eval()`` / ``requires_grad_`` on the view
    never touch the trained policy."""

    def __init__(self, policy: AdapterPolicy) -> None:
        super().__init__()
        object.__setattr__(self, "_policy", policy)
        self.tokenizer = policy.tokenizer

    supports_kv_cache: ClassVar[bool] = True

    @property
    def policy(self) -> AdapterPolicy:
        return self._policy  # type: ignore[no-any-return]

    @property
    def mask_token_id(self) -> int:
        return self.policy.mask_token_id

    @property
    def vocab_size(self) -> int:
        return self.policy.vocab_size

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.policy.encode_prompt(prompt)

    supports_lean_scoring: ClassVar[bool] = True

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **scoring: Any) -> Tensor:
        with torch.no_grad(), self.policy.adapters_disabled():
            return self.policy(input_ids, attention_mask, **scoring)

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        with torch.no_grad(), self.policy.adapters_disabled():
            return self.policy.forward_cache(input_ids, attention_mask)

    def forward_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None
    ) -> Tensor:
        with torch.no_grad(), self.policy.adapters_disabled():
            return self.policy.forward_window(window_ids, start, cache, attention_mask)

    def save_pretrained(self, path: str | Path) -> None:
        raise TypeError("a reference view is not saved; save the policy (its adapters are merged on save)")

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> MaskedDiffusionPolicy:
        raise TypeError("a reference view is made with policy.reference_view(), not loaded")

    @classmethod
    def from_config(cls, config: Any) -> MaskedDiffusionPolicy:
        raise TypeError("a reference view is made with policy.reference_view(), not built from a config")

