"""The `Sampler` interface and what it returns.

A sampler fills ``L`` masked completion positions after a batch of left-padded prompts. Besides
the tokens it returns, where it can, *how* it got there: the step at which each position was
revealed (from which the unmasking order follows) and the log-probability of each placed token
under the sampling policy and under any extra scoring policies (e.g. the reference), evaluated on
the same canvas at the same step. Those are what exact path likelihoods and trajectory-based
objectives need; objectives that need them check ``Sampler.records``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.config import ComponentConfig
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.rows import RowState, summed


@dataclass
class SampleOutput(RowState):
    """Completions and, where the sampler records them, their trajectory.

    Attributes:
        batch: prompts + completions (``completion_ids [B, L]`` holds no mask token).
        unmask_step: ``[B, L]`` long, the step at which each completion position was revealed
            (0-based, global over blocks), or None.
        token_logprobs: ``[B, L]`` log pi_policy(token | canvas when it was placed) at
            temperature 1, or None. With one token per step these sum to the exact path
            log-probability log p(o | q; sigma).
        scorer_logprobs: per extra scoring policy, the same quantity under that policy (``[B, L]``).
        nfe: forward passes of the sampling policy (a classifier-free-guidance pass counts as 2);
            chunks joined with ``cat`` add up.
        num_steps: number of denoising steps taken.

    ``index``/``cat`` (``ddrl.rows.RowState``) slice and join every row field, subclasses' included.
    """

    batch: SequenceBatch
    unmask_step: Tensor | None = None
    token_logprobs: Tensor | None = None
    scorer_logprobs: list[Tensor] = field(default_factory=list)
    nfe: int = summed()
    num_steps: int = 0

    @property
    def completion_ids(self) -> Tensor:
        return self.batch.completion_ids

    @property
    def order(self) -> Tensor | None:
        """``[B, L]`` the completion positions in the order they were revealed (sigma).

        Ties (several tokens revealed at one step) are broken by position.
        """
        if self.unmask_step is None:
            return None
        return torch.argsort(self.unmask_step, dim=-1, stable=True)

    @property
    def path_logprob(self) -> Tensor | None:
        """``[B]`` sum of ``token_logprobs`` over the completion (exact for one token per step)."""
        return None if self.token_logprobs is None else self.token_logprobs.sum(-1)


class SamplerConfig(ComponentConfig):
    """Options every sampler shares."""

    max_completion_length: int = 32
    temperature: float = 0.0


class Sampler(ABC):
    """Generates completions for a batch of prompts.

    ``records`` lists what the returned ``SampleOutput`` carries besides tokens:
    ``"unmask_step"``, ``"token_logprobs"``, ``"scorer_logprobs"``, and ``"exact_path"`` when
    one token is revealed per step in an order drawn independently of the policy (uniformly at
    random), so that summed token log-probs are exact path likelihoods log p(o | q; sigma) and
    their ref/old difference is a valid importance weight.
    """

    Config: ClassVar[type[SamplerConfig]]

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config: SamplerConfig) -> Sampler:
        return cls(config)

    @property
    def records(self) -> frozenset[str]:
        return frozenset()

    @property
    def completion_length(self) -> int:
        return self.config.max_completion_length

    @abstractmethod
    def sample(
        self,
        policy: MaskedDiffusionPolicy,
        prompt_ids: Tensor,
        prompt_mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        scorers: Sequence[MaskedDiffusionPolicy] = (),
    ) -> SampleOutput:
        """Fill ``max_completion_length`` masks after ``prompt_ids [B, P]`` (left-padded).

        ``generator`` drives every random draw (so a seed makes a run repeatable); ``scorers``
        are evaluated on the sampler's canvases when the sampler records scorer log-probs.
        """


def gumbel_argmax(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """A sample of softmax(logits / temperature) by float64 Gumbel-max; argmax at temperature 0.

    Same law as LLaDA's ``exp(l) / (-log u)^tau`` trick, computed in log space so that large
    logits cannot overflow.
    """
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    u = u.clamp_(min=torch.finfo(torch.float64).tiny)
    return (logits.double() / temperature - torch.log(-torch.log(u))).argmax(-1)


def check_prompts(prompt_ids: Tensor, prompt_mask: Tensor | None, mask_id: int) -> Tensor:
    """Validate a prompt batch; return the mask (all True when none was given)."""
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be [B, P], got shape {tuple(prompt_ids.shape)}")
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
    prompt_mask = prompt_mask.bool()
    if bool((prompt_ids[prompt_mask] == mask_id).any()):
        raise ValueError("a prompt contains the mask token; prompts must be fully revealed")
    return prompt_mask


def masked_canvas(prompt_ids: Tensor, prompt_mask: Tensor, n: int, mask_id: int) -> tuple[Tensor, Tensor]:
    """``x [B, P+n]``: each prompt followed by ``n`` masks, and its attention mask ``[B, P+n]``
    (the prompt's padding off, every completion position on)."""
    b, device = prompt_ids.shape[0], prompt_ids.device
    x = torch.cat([prompt_ids, torch.full((b, n), mask_id, dtype=torch.long, device=device)], 1)
    attn = torch.cat([prompt_mask, torch.ones((b, n), dtype=torch.bool, device=device)], 1)
    return x, attn


def empty_records(b: int, n: int, num_scorers: int, device: torch.device) -> tuple[Tensor, Tensor, list[Tensor]]:
    """The records a sampler fills as it reveals ``[B, n]`` positions: ``unmask_step`` (-1 = not yet),
    ``token_logprobs`` and one ``scorer_logprobs`` tensor per scorer (zeros)."""
    unmask_step = torch.full((b, n), -1, dtype=torch.long, device=device)
    return unmask_step, torch.zeros((b, n), device=device), [torch.zeros((b, n), device=device) for _ in range(num_scorers)]
