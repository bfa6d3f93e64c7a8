"""The `MaskedDiffusionPolicy` interface: a network plus the tokenizer that feeds it.

Contract every policy keeps (samplers and estimators rely on nothing else):

* ``policy.logits(input_ids [B, T], attention_mask [B, T] | None) -> [B, T, V]``: the logits at
  position j predict the token at position j (a model that predicts j from j-1, like Dream, shifts
  inside its own ``forward``). The mask token's logit is ``-inf``-like, so the distribution at a
  masked position is over real tokens only.
* ``attention_mask`` is False at left padding; a padded row gives the same logits at its real
  positions as the unpadded sequence (positions are counted from the first real token).
* ``mask_token_id``, ``vocab_size`` and (when the policy reads text) ``tokenizer``.
* ``save_pretrained(dir)`` / ``from_pretrained(dir)`` round-trip through JSON + safetensors.

Capabilities the trainer uses are declared here, never probed: ``supports_gradient_checkpointing``
with ``set_gradient_checkpointing``, ``frozen_reference`` (the RL reference of a run starting from
this policy) and ``save_resumable`` (what a checkpoint keeps to resume exactly).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ddrl.models.cache import KVCache


@runtime_checkable
class Tokenizer(Protocol):
    """The part of a tokenizer ddrl uses (Hugging Face tokenizers already satisfy it)."""

    pad_token_id: int | None
    eos_token_id: int | None
    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class MaskedDiffusionPolicy(nn.Module, ABC):
    """A masked diffusion model pi_theta(x~)_{d,u} ~ P(X_d = u | unmasked part of x~).

    Subclasses implement ``forward`` (raw logits) and persistence; the base class adds the
    invariants of the contract above. ``Config`` is the pydantic model a recipe's ``model``
    section is validated against; ``from_config`` builds the policy from it.
    """

    Config: ClassVar[type[BaseModel]]

    tokenizer: Tokenizer | None

    @property
    @abstractmethod
    def mask_token_id(self) -> int:
        """Token id of the mask M."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """V, the size of the logits' last dimension."""

    @abstractmethod
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Raw logits ``[B, T, V]`` for ``input_ids [B, T]``; position j predicts token j."""

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        """Write the policy as a directory (JSON config, safetensors weights, tokenizer)."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> MaskedDiffusionPolicy:
        """Load a directory written by ``save_pretrained`` (or laid out like the published one)."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: BaseModel) -> MaskedDiffusionPolicy:
        """Build the policy from its validated ``Config``."""

    # ----------------------------------------------------------------------------------------
    # optional: key/value caching for the `fast` sampler (ddrl.models.cache explains the layouts)
    supports_kv_cache: ClassVar[bool] = False

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Raw logits ``[B, T, V]`` of the whole canvas and every layer's keys/values."""
        raise NotImplementedError(f"{type(self).__name__} does not support a key/value cache")

    def forward_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Raw logits ``[B, S, V]`` of positions ``[start, start+S)`` of a ``[B, T]`` canvas whose
        other positions' keys/values come from ``cache`` (prefix: ``cache.length == start``;
        dual: ``cache.length == T``). ``attention_mask`` describes the whole canvas."""
        raise NotImplementedError(f"{type(self).__name__} does not support a key/value cache")

    # ----------------------------------------------------------------------------------------
    # optional: memory-lean scoring (``ddrl.models.head``). A policy that sets the flag accepts
    # ``forward(input_ids, attention_mask, scored=[B, T] bool, targets=[B, T] long)`` and returns the
    # ``[M]`` float32 log-probabilities of the targets at the scored positions (M = scored.sum(), in
    # row-major order), applying its LM head to those positions only. Inside ``forward`` so that a
    # distributed wrapper (DDP, FSDP) sees the whole computation.
    supports_lean_scoring: ClassVar[bool] = False

    def target_logprobs(self, input_ids: Tensor, attention_mask: Tensor | None, scored: Tensor, targets: Tensor) -> Tensor:
        """``[M]`` log pi(input)_{j, targets_j} at the ``scored [B, T]`` positions (row-major)."""
        if self.supports_lean_scoring:
            return self(input_ids, attention_mask, scored=scored, targets=targets)
        logits = self.logits(input_ids, attention_mask)[scored].float()
        picked = targets[scored]
        return logits.gather(-1, picked[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    # ----------------------------------------------------------------------------------------
    # training capabilities (the trainer calls these; defaults suit a plain module)
    supports_gradient_checkpointing: ClassVar[bool] = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass instead of keeping them (``train.gradient_checkpointing``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    @classmethod
    def skeleton(cls, config: BaseModel) -> MaskedDiffusionPolicy:
        """The policy ``from_config(config)`` builds, for counting only (``ddrl train --dry-run``):
        the same parameters' shapes, dtypes and ``requires_grad``, their values need not be read
        (a large model returns them on the meta device). Default: ``from_config`` itself."""
        return cls.from_config(config)

    def shard_units(self) -> list[nn.Module]:
        """The submodules sharded one by one under ``train.sharding: fsdp2`` (the decoder blocks:
        one block's parameters are gathered at a time); the rest is sharded as one unit. Default:
        none, the whole policy is one unit (correct, but gathers everything at once)."""
        return []

    def auxiliary_metrics(self) -> dict[str, float]:
        """Statistics the model gathered in its forwards since the last call (e.g. a mixture of
        experts' router balance), returned and reset; the trainer logs them with every step.
        None by default."""
        return {}

    def frozen_reference(self) -> MaskedDiffusionPolicy:
        """The reference pi_ref of a run that starts from this policy: its current weights, frozen
        (eval mode, no gradients). A copy by default; a policy that can serve them without one
        (LoRA: the base model with the adapters off) returns a view instead."""
        return copy.deepcopy(self).eval().requires_grad_(False)

    def save_resumable(self, path: str | Path) -> None:
        """Write what ``from_pretrained`` needs to continue training exactly (a checkpoint's
        policy); by default ``save_pretrained``."""
        self.save_pretrained(path)

    # ----------------------------------------------------------------------------------------
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[B, T, V]`` logits with the mask token excluded from every distribution."""
        return suppress_token(self(input_ids, attention_mask), self.mask_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok is not None and tok.pad_token_id is not None:
            return int(tok.pad_token_id)
        return self.mask_token_id  # never attended to: padding is excluded by the attention mask

    @property
    def eos_token_id(self) -> int | None:
        tok = self.tokenizer
        return None if tok is None or tok.eos_token_id is None else int(tok.eos_token_id)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt, with whatever template the model expects around it."""
        return self._require_tokenizer().encode(prompt, add_special_tokens=True)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a conversation ``[{"role", "content"}, ..]`` ending before the reply.

        With a tokenizer that carries a chat template (Hugging Face), the template renders it
        with the generation prompt; otherwise (``tiny``) the turns' contents are joined by
        newlines and encoded like a prompt.
        """
        tok = self._require_tokenizer()
        if getattr(tok, "chat_template", None) and hasattr(tok, "apply_chat_template"):
            text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            return tok.encode(text, add_special_tokens=False)
        return self.encode_prompt("\n".join(m["content"] for m in messages))

    def encode_completion(self, text: str, length: int) -> list[int]:
        """``length`` token ids of a completion: the text's tokens, cut to ``length`` or padded
        with EOS (the model learns to stop by predicting the padding)."""
        eos = self.eos_token_id
        if eos is None:
            raise ValueError(f"{type(self).__name__} has no EOS token to pad completions with")
        ids = self._require_tokenizer().encode(text, add_special_tokens=False)[:length]
        return ids + [eos] * (length - len(ids))

    def decode_completion(self, ids: Sequence[int] | Tensor) -> str:
        """Text of a completion, cut at the first EOS, special tokens dropped."""
        ids = [int(i) for i in ids]
        eos = self.eos_token_id
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        return self._require_tokenizer().decode(ids, skip_special_tokens=True)

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__} has no tokenizer: it works on token ids only")
        return self.tokenizer


def suppress_token(logits: Tensor, token_id: int) -> Tensor:
    """``logits`` with one vocabulary entry set to the dtype's most negative finite value:
    exp() underflows to exactly 0, yet 0 * logit stays 0 (entropies remain finite)."""
    index = torch.tensor([token_id], device=logits.device)
    return logits.index_fill(-1, index, torch.finfo(logits.dtype).min)


def max_sequence_length(policy: MaskedDiffusionPolicy) -> tuple[int, str] | None:
    """The longest sequence (prompt + completion) the model accepts and the setting that says so, or
    None when the model states no limit."""
    source = getattr(policy, "source_dir", None)
    where = f"{source}/config.json" if source is not None else "the model's config"
    candidates = (
        (lambda p: p.max_sequence_length, "the model's max_sequence_length"),
        (lambda p: p.arch.max_seq_len, "model.architecture.max_seq_len, or max_seq_len in the config.json of model.path"),
        (lambda p: p.model.config.max_position_embeddings, f"max_position_embeddings / max_sequence_length in {where}"),
        (lambda p: p.config.max_position_embeddings, f"max_position_embeddings in {where}"),
    )
    for get, name in candidates:
        try:
            value = get(policy)
        except AttributeError:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, name
    return None
