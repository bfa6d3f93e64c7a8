"""The `LikelihoodEstimator` interface: masked views of a batch, scored by a policy.

Every estimator in ddrl is the same two steps (docs/objectives.md, "Likelihood estimators"):

1. ``draw``: a random *mask scheme* turns each of the B sequences into R masked copies ("views"),
   saying for each view which completion positions are masked, which of them are scored, and the
   weight of each scored token. Drawing is separate from scoring so that the same views can be
   scored by several policies (shared masks give low-variance log-ratios, e.g. ref vs old).
2. ``score``: one policy evaluates every view; the result holds ``log pi(view)_{d, o_d}`` at the
   scored positions, with gradients when enabled.

The estimate is always the weighted sum of the scored log-probs::

    per_token[b, l] = sum_r weights[b, r, l] * logprobs[b, r, l]         # [B, L]
    sequence[b]     = sum_l per_token[b, l]                              # [B]

so an objective that needs per-token log-probs (PPO-style ratios) and one that needs a sequence
log-likelihood (importance weights) use any estimator alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from ddrl.batch import SequenceBatch
from ddrl.config import ComponentConfig
from ddrl.models.base import MaskedDiffusionPolicy


@dataclass(frozen=True)
class MaskedViews:
    """R masked copies of each sequence of a batch (view ``(b, r)``).

    Attributes:
        completion_masked: ``[B, R, L]`` bool, completion positions replaced by the mask token.
        scored: ``[B, R, L]`` bool, positions whose log-prob enters the estimate (a subset of
            ``completion_masked``).
        weights: ``[B, R, L]`` float, weight of each scored log-prob (0 where not scored).
        prompt_masked: ``[B, R, P']`` bool or None, prompt positions replaced by the mask token.
            Aligned on the right like the left-padded prompts: views concatenated from chunks
            with different prompt widths are padded on the left (False), and a batch whose
            prompt is narrower (P <= P') uses the last P columns.
    """

    completion_masked: Tensor
    scored: Tensor
    weights: Tensor
    prompt_masked: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.completion_masked.shape
        if len(shape) != 3 or self.scored.shape != shape or self.weights.shape != shape:
            raise ValueError("completion_masked, scored and weights must all be [B, R, L]")
        if bool((self.scored & ~self.completion_masked).any()):
            raise ValueError("a scored position must be masked")

    @property
    def num_views(self) -> int:
        """R, views per sequence."""
        return self.completion_masked.shape[1]

    def canvases(self, batch: SequenceBatch, mask_id: int) -> tuple[Tensor, Tensor]:
        """``input_ids [B*R, P+L]`` with the masks applied, and the matching attention mask.

        View ``(b, r)`` is row ``b * R + r``.
        """
        r = self.num_views
        prompt = batch.prompt_ids.repeat_interleave(r, 0)
        if self.prompt_masked is not None:
            # padding is never masked: it is not attended to, and stays recognisable as padding
            pm = _right_aligned(self.prompt_masked, batch.prompt_length).flatten(0, 1)
            pm = pm & batch.prompt_mask.repeat_interleave(r, 0)
            prompt = prompt.masked_fill(pm, mask_id)
        completion = batch.completion_ids.repeat_interleave(r, 0)
        completion = completion.masked_fill(self.completion_masked.flatten(0, 1), mask_id)
        ids = torch.cat([prompt, completion], dim=1)
        return ids, batch.attention_mask.repeat_interleave(r, 0)

    def to(self, device: torch.device | str) -> MaskedViews:
        return self._map(lambda t: t.to(device))

    def index(self, rows: Tensor | slice) -> MaskedViews:
        """The views of the given batch rows."""
        return self._map(lambda t: t[rows])

    @staticmethod
    def cat(parts: list[MaskedViews]) -> MaskedViews:
        """Concatenate the views of consecutive row chunks (prompt masks left-padded to one width,
        as ``SequenceBatch.cat`` pads the prompts)."""
        prompts = [v.prompt_masked for v in parts]
        if any(p is None for p in prompts) and not all(p is None for p in prompts):
            raise ValueError("cannot concatenate views with and without prompt masks")
        prompt_masked = None
        if prompts[0] is not None:
            width = max(p.shape[-1] for p in prompts)  # type: ignore[union-attr]
            prompt_masked = torch.cat([_right_aligned(p, width) for p in prompts])  # type: ignore[arg-type]
        return MaskedViews(
            torch.cat([v.completion_masked for v in parts]),
            torch.cat([v.scored for v in parts]),
            torch.cat([v.weights for v in parts]),
            prompt_masked,
        )

    def _map(self, fn) -> MaskedViews:  # noqa: ANN001
        pm = None if self.prompt_masked is None else fn(self.prompt_masked)
        return MaskedViews(fn(self.completion_masked), fn(self.scored), fn(self.weights), pm)


def _right_aligned(mask: Tensor, width: int) -> Tensor:
    """``mask [..., P']`` as ``[..., width]``: the last columns kept, False padding added on the left."""
    have = mask.shape[-1]
    return mask[..., have - width :] if have >= width else nn.functional.pad(mask, (width - have, 0))


@dataclass
class TokenLogProbs:
    """A policy's log-probs on a set of views. ``logprobs [B, R, L]`` is 0 where not scored."""

    logprobs: Tensor
    views: MaskedViews

    def per_token(self) -> Tensor:
        """``[B, L]`` sum_r weights * logprobs: the per-token surrogate."""
        return (self.views.weights * self.logprobs).sum(1)

    def sequence(self) -> Tensor:
        """``[B]`` the sequence-level estimate (log-likelihood or its bound)."""
        return self.per_token().sum(-1)

    @property
    def token_mask(self) -> Tensor:
        """``[B, L]`` positions scored in at least one view."""
        return self.views.scored.any(1)


def gather_logprobs(logits: Tensor, index: Tensor) -> Tensor:
    """``log softmax(logits)[..., index]`` in float32: ``logits [..., V]``, ``index [...]`` -> ``[...]``."""
    logits = logits.float()
    return logits.gather(-1, index[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def score_views(
    policy: MaskedDiffusionPolicy,
    batch: SequenceBatch,
    views: MaskedViews,
    micro_batch_size: int | None = None,
) -> Tensor:
    """``[B, R, L]`` log pi(view)_{l, o_l} at every scored position (0 elsewhere).

    The policy runs once per view, ``micro_batch_size`` views at a time, and is asked for the
    target log-probabilities of the scored positions only (``target_logprobs``: a policy with
    ``supports_lean_scoring`` applies its head there alone and never holds more than a chunk of
    ``[*, V]`` logits, ``ddrl.models.head``). Differentiable: call it under ``torch.no_grad()``
    for old/reference policies.
    """
    b, r, n = views.scored.shape
    ids, attn = views.canvases(batch, policy.mask_token_id)
    targets = torch.cat([torch.zeros_like(batch.prompt_ids), batch.completion_ids], 1).repeat_interleave(r, 0)
    scored = views.scored.flatten(0, 1)  # (B*R, L)
    prompt = torch.zeros((scored.shape[0], batch.prompt_length), dtype=torch.bool, device=scored.device)
    step = micro_batch_size or ids.shape[0]
    chunks = []
    for start in range(0, ids.shape[0], step):
        sl = slice(start, start + step)
        sel = scored[sl]
        if not bool(sel.any()):
            chunks.append(torch.zeros(sel.shape, device=ids.device))
            continue
        lp = policy.target_logprobs(ids[sl], attn[sl], torch.cat([prompt[sl], sel], 1), targets[sl])  # (M,)
        chunks.append(torch.zeros(sel.shape, device=lp.device, dtype=lp.dtype).masked_scatter(sel, lp))
    return torch.cat(chunks).view(b, r, n)


class EstimatorConfig(ComponentConfig):
    """Options every estimator shares."""

    micro_batch_size: int | None = Field(None, ge=1, description="views per forward pass; null = all")


class LikelihoodEstimator(ABC):
    """Log-likelihood (or a per-token surrogate) of completions under a policy.

    ``provides`` names what ``TokenLogProbs`` means for this estimator; objectives state what
    they need (e.g. ``"sequence_bound"`` for an ELBO, ``"exact_path"`` for a path likelihood).
    """

    Config: ClassVar[type[EstimatorConfig]]
    provides: ClassVar[frozenset[str]] = frozenset({"token", "sequence"})

    def __init__(self, config: EstimatorConfig) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> LikelihoodEstimator:
        return cls(config)

    @abstractmethod
    def draw(
        self,
        batch: SequenceBatch,
        generator: torch.Generator | None = None,
        order: Tensor | None = None,
    ) -> MaskedViews:
        """Draw the views of ``batch`` (``order [B, L]``: a sampler's unmasking order, if known)."""

    def score(self, policy: MaskedDiffusionPolicy, batch: SequenceBatch, views: MaskedViews) -> TokenLogProbs:
        """Score ``views`` under ``policy`` (differentiable)."""
        return TokenLogProbs(score_views(policy, batch, views, self.config.micro_batch_size), views)

    def log_likelihood(
        self,
        policy: MaskedDiffusionPolicy,
        batch: SequenceBatch,
        generator: torch.Generator | None = None,
        order: Tensor | None = None,
    ) -> Tensor:
        """``[B]`` the sequence estimate from one fresh draw."""
        return self.score(policy, batch, self.draw(batch, generator, order)).sequence()

    def log_ratio(
        self,
        numerator: MaskedDiffusionPolicy,
        denominator: MaskedDiffusionPolicy,
        batch: SequenceBatch,
        generator: torch.Generator | None = None,
        order: Tensor | None = None,
    ) -> Tensor:
        """``[B]`` estimate of log p_num(o|q) - log p_den(o|q), both scored on the same views."""
        views = self.draw(batch, generator, order)
        return self.score(numerator, batch, views).sequence() - self.score(denominator, batch, views).sequence()
