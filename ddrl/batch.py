"""The canvas every component passes around: left-padded prompts followed by completions.

A batch of B sequences is stored as two aligned parts::

    prompt_ids      [B, P]  left-padded; prompt_mask is False on padding
    completion_ids  [B, L]  always L tokens (EOS padding after the answer counts as tokens)

so that the completion of every row starts at the same column P. Samplers produce it, estimators
score it, objectives train on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class SequenceBatch:
    """Prompts + completions on one canvas of width ``P + L``.

    Attributes:
        prompt_ids: ``[B, P]`` long, left-padded.
        prompt_mask: ``[B, P]`` bool, False at left padding.
        completion_ids: ``[B, L]`` long; may contain the mask id while a sampler is still running.
        completion_mask: ``[B, L]`` bool, the completion positions that count (may be masked and
            scored). All True by default; an objective may restrict it, e.g. up to the first EOS.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor

    def __post_init__(self) -> None:
        b, p = self.prompt_ids.shape
        if self.prompt_mask.shape != (b, p):
            raise ValueError(f"prompt_mask {tuple(self.prompt_mask.shape)} != prompt_ids {(b, p)}")
        if self.completion_ids.dim() != 2 or self.completion_ids.shape[0] != b:
            raise ValueError(
                f"completion_ids must be [B={b}, L], got {tuple(self.completion_ids.shape)}"
            )
        if self.completion_mask.shape != self.completion_ids.shape:
            raise ValueError("completion_mask must have the shape of completion_ids")

    @classmethod
    def from_parts(
        cls,
        prompt_ids: Tensor,
        completion_ids: Tensor,
        prompt_mask: Tensor | None = None,
        completion_mask: Tensor | None = None,
    ) -> SequenceBatch:
        """Build a batch, defaulting both masks to all-True."""
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
        if completion_mask is None:
            completion_mask = torch.ones_like(completion_ids, dtype=torch.bool)
        return cls(prompt_ids, prompt_mask.bool(), completion_ids, completion_mask.bool())

    @property
    def batch_size(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        """P, the column where every completion starts."""
        return self.prompt_ids.shape[1]

    @property
    def completion_length(self) -> int:
        """L, the number of completion tokens per row."""
        return self.completion_ids.shape[1]

    @property
    def input_ids(self) -> Tensor:
        """``[B, P+L]`` the whole canvas."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """``[B, P+L]`` bool, False only at the prompt's left padding."""
        ones = torch.ones_like(self.completion_ids, dtype=torch.bool)
        return torch.cat([self.prompt_mask, ones], dim=1)

    @property
    def device(self) -> torch.device:
        return self.prompt_ids.device

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(
            self.prompt_ids.to(device),
            self.prompt_mask.to(device),
            self.completion_ids.to(device),
            self.completion_mask.to(device),
        )

    def index(self, rows: Tensor | slice) -> SequenceBatch:
        """The sub-batch of the given rows (a slice, an index tensor or a bool mask)."""
        return SequenceBatch(
            self.prompt_ids[rows],
            self.prompt_mask[rows],
            self.completion_ids[rows],
            self.completion_mask[rows],
        )

    @classmethod
    def cat(cls, parts: list[SequenceBatch]) -> SequenceBatch:
        """Consecutive batches joined along the rows; prompts left-padded again to one width
        (padding id 0, never attended to). Every part must have the same completion length."""
        width = max(p.prompt_length for p in parts)

        def pad(t: Tensor, value: int | bool) -> Tensor:
            return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

        return cls(
            torch.cat([pad(p.prompt_ids, 0) for p in parts]),
            torch.cat([pad(p.prompt_mask, False) for p in parts]),
            torch.cat([p.completion_ids for p in parts]),
            torch.cat([p.completion_mask for p in parts]),
        )

    def up_to_eos(self, eos_id: int | None) -> SequenceBatch:
        """The batch whose completion positions count only up to and including the first EOS
        (unchanged when the policy has no EOS)."""
        if eos_id is None:
            return self
        return self.with_completion_mask(self.completion_mask & truncate_after_eos(self.completion_ids, eos_id))

    def repeat_interleave(self, repeats: int) -> SequenceBatch:
        """Each row repeated ``repeats`` times in place (row i -> rows i*r .. i*r+r-1)."""
        return SequenceBatch(
            self.prompt_ids.repeat_interleave(repeats, 0),
            self.prompt_mask.repeat_interleave(repeats, 0),
            self.completion_ids.repeat_interleave(repeats, 0),
            self.completion_mask.repeat_interleave(repeats, 0),
        )

    def with_completion_mask(self, completion_mask: Tensor) -> SequenceBatch:
        return replace(self, completion_mask=completion_mask.bool())


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists into ``ids [B, P]`` and ``mask [B, P]`` (False at padding)."""
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = True
    return ids, mask


def truncate_after_eos(completion_ids: Tensor, eos_id: int, include_eos: bool = True) -> Tensor:
    """``[B, L]`` bool mask of positions up to (and, by default, including) the first EOS."""
    is_eos = completion_ids == eos_id
    # number of EOS strictly before each position
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    keep = before == 0
    if not include_eos:
        keep = keep & ~is_eos
    return keep
