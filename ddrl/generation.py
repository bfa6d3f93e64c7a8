"""Text in, text out: encode prompts, run a sampler in batches, decode completions.

Used by ``ddrl sample`` and evaluation; training works on token tensors directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ddrl.batch import left_pad
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.samplers.base import Sampler, SampleOutput


@dataclass
class Generation:
    """Completions of a list of prompts, with the cost of producing them."""

    prompts: list[str]
    completions: list[str]
    completion_ids: list[list[int]]
    nfe: int  # forward passes, summed over batches
    seconds: float
    tokens: int  # completion tokens produced

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def encode_prompts(
    policy: MaskedDiffusionPolicy, prompts: Sequence[str] | Sequence[list[int]], max_prompt_length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Left-padded ``ids [B, P]`` and ``mask [B, P]``; text goes through ``policy.encode_prompt``.

    Prompts longer than ``max_prompt_length`` keep their last tokens (left truncation).
    """
    ids = [policy.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts]
    if max_prompt_length is not None:
        ids = [seq[-max_prompt_length:] for seq in ids]
    return left_pad(ids, policy.pad_token_id)


def generate(
    policy: MaskedDiffusionPolicy,
    sampler: Sampler,
    prompts: Sequence[str] | Sequence[list[int]],
    *,
    batch_size: int = 16,
    generator: torch.Generator | None = None,
    max_prompt_length: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> Generation:
    """Generate one completion per prompt (text, or token ids), ``batch_size`` prompts at a time;
    completions are decoded by ``decode`` (default: the policy's ``decode_completion``)."""
    decode = decode or policy.decode_completion
    completions: list[str] = []
    completion_ids: list[list[int]] = []
    nfe = tokens = 0
    start = time.perf_counter()
    was_training = policy.training
    policy.eval()
    try:
        for lo in range(0, len(prompts), batch_size):
            chunk = list(prompts[lo : lo + batch_size])
            ids, mask = encode_prompts(policy, chunk, max_prompt_length)
            out: SampleOutput = sampler.sample(policy, ids.to(policy.device), mask.to(policy.device), generator=generator)
            for row in out.completion_ids.tolist():
                completion_ids.append(row)
                completions.append(decode(row))
            nfe += out.nfe
            tokens += out.completion_ids.numel()
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        policy.train(was_training)
    shown = [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompts]
    return Generation(shown, completions, completion_ids, nfe, time.perf_counter() - start, tokens)
