"""`block_elbo`: the block-diffusion ELBO (docs/objectives.md, "Block diffusion").

A block-diffusion model (LLaDA2.x, SDAR, BD3-LM; the `tiny` model with ``architecture.block_size``)
generates the completion block by block; inside a block it is an any-order masked diffusion model
that sees the clean earlier blocks. So

    log p(o|q) = sum_b log p(o_b | q, o_<b)
              >= sum_b E_{m ~ U{1..n_b}} (n_b/m) E_{M in block b, |M|=m} sum_{d in M} log pi(x^{b,M})_{d, o_d}

where the canvas x^{b,M} holds the prompt and the blocks before b clean, the positions M of block b
masked (the rest of block b clean), and every position of the blocks after b masked: the canvas the
block-by-block sampler has when it decodes block b. For a block-causal model the later blocks are
never attended to, so what fills them does not matter; masks make the bound also that of the
semi-autoregressive sampler of a fully bidirectional model. Completion positions outside
``completion_mask`` (after the first EOS) are never scored; they are masked in later blocks and
clean elsewhere (context, as in the other estimators).

Blocks follow the model's convention (``ddrl.models.tiny``): blocks of ``block_size`` real tokens
counted from the first real prompt token, so the first completion block is shorter when the prompt's
real length is not a multiple of ``block_size``. ``block_size`` must equal the model's (checked
when the policy exposes a ``block_size``).

Each of the K views of a row picks one block, stratified (view k takes block
floor((k + u) nb / K), one u ~ U[0, 1) per row, nb the row's number of completion blocks, so that over
the K views every block is picked K/nb times in expectation), then m ~ U{1..n_b} positions of it,
uniformly; each scored token has weight (nb/K) (n_b/m). The weighted sum is an unbiased estimate of
the bound above, returned in the ``MaskedViews``/``TokenLogProbs`` form of every estimator, so
objectives (dmpo, diffu_grpo, coupled_grpo) run on it unchanged.
"""

from __future__ import annotations

import math

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import EstimatorConfig, LikelihoodEstimator, MaskedViews, TokenLogProbs, score_views
from ddrl.models.base import MaskedDiffusionPolicy

MAX_ENUMERATED_BLOCK = 12


class BlockElboConfig(EstimatorConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "block_elbo"
    num_samples: int = Field(4, ge=1, description="K masked copies per sequence, spread over the blocks")
    block_size: int = Field(32, ge=1, description="the model's block size (architecture.block_size)")


def completion_blocks(batch: SequenceBatch, block_size: int) -> Tensor:
    """``[B, L]`` the block of each completion position, counted from the row's first completion
    block (0): blocks of ``block_size`` real tokens from the first real prompt token."""
    n_prompt = batch.prompt_mask.sum(-1, keepdim=True)  # (B, 1)
    pos = n_prompt + torch.arange(batch.completion_length, device=n_prompt.device)[None, :]
    absolute = pos // block_size
    return absolute - absolute[:, :1]


def block_masks(
    valid: Tensor, block_of: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> MaskedViews:
    """The block-ELBO views (module docstring): ``valid, block_of [B, L]`` -> ``[B, K, L]``."""
    b, n = valid.shape
    k = num_samples
    device = valid.device
    last = torch.where(valid, block_of, -1).amax(-1) if n else torch.full((b,), -1, device=device)
    nb = (last + 1).clamp(min=0)  # (B,) completion blocks holding a valid position
    u = torch.rand((b, 1), generator=generator, device=device)
    strata = (torch.arange(k, device=device)[None, :] + u) / k  # (B, K) in [0, 1)
    chosen = (strata * nb[:, None]).floor().long()  # (B, K) in 0..nb-1
    offset = block_of[:, None, :] - chosen[..., None]  # (B, K, L): < 0 earlier, 0 chosen, > 0 later
    in_block = (offset == 0) & valid[:, None, :]
    n_block = in_block.sum(-1)  # (B, K)
    m = (torch.rand((b, k), generator=generator, device=device) * n_block).floor().long() + 1  # U{1..n_b}
    scores = torch.rand((b, k, n), generator=generator, device=device).masked_fill(~in_block, 2.0)
    ranks = scores.argsort(-1).argsort(-1)
    scored = (ranks < m[..., None]) & in_block
    masked = scored | (offset > 0)
    m_real = scored.sum(-1, keepdim=True).clamp(min=1).float()
    weights = scored.float() * (nb[:, None, None].float() / k) * n_block[..., None].float() / m_real
    return MaskedViews(masked, scored, weights)


class BlockElboEstimator(LikelihoodEstimator):
    Config = BlockElboConfig
    provides = frozenset({"token", "sequence", "sequence_bound"})
    config: BlockElboConfig

    def draw(
        self, batch: SequenceBatch, generator: torch.Generator | None = None, order: Tensor | None = None
    ) -> MaskedViews:
        blocks = completion_blocks(batch, self.config.block_size)
        return block_masks(batch.completion_mask, blocks, self.config.num_samples, generator)

    def score(self, policy: MaskedDiffusionPolicy, batch: SequenceBatch, views: MaskedViews) -> TokenLogProbs:
        check_block_size(policy, self.config.block_size)
        return super().score(policy, batch, views)


def check_block_size(policy: MaskedDiffusionPolicy, block_size: int) -> None:
    model = getattr(policy, "block_size", None)
    if model is not None and model != block_size:
        raise ValueError(
            f"estimator.block_size is {block_size} but the model's blocks have {model} tokens "
            "(architecture.block_size): the block ELBO must cut the completion where the model does"
        )


def _uniform_layout(batch: SequenceBatch, block_size: int) -> list[list[int]]:
    """The completion positions of each block, the same for every row (exact functions only)."""
    if not bool(batch.completion_mask.all()):
        raise ValueError("exact block enumeration scores the whole completion; completion_mask must be all True")
    blocks = completion_blocks(batch, block_size)
    if not bool((blocks == blocks[:1]).all()):
        raise ValueError("exact block enumeration needs the same real prompt length in every row")
    row = blocks[0].tolist()
    layout = [[i for i, c in enumerate(row) if c == j] for j in range(max(row) + 1)] if row else []
    if any(len(part) > MAX_ENUMERATED_BLOCK for part in layout):
        raise ValueError(f"a block of more than {MAX_ENUMERATED_BLOCK} positions is too long to enumerate")
    return layout


def _block_views(layout: list[list[int]], j: int, n: int, batch_size: int, device: torch.device,
                 nonempty: bool) -> tuple[Tensor, Tensor]:
    """For block j: ``masked [S, L]`` (one row per subset s of the block's positions: bit i of s set =
    the block's i-th position is masked) with the later blocks masked, and the subsets' bits ``[S, n_b]``."""
    part = layout[j]
    later = [i for jj in range(j + 1, len(layout)) for i in layout[jj]]
    subsets = torch.arange(1 if nonempty else 0, 2 ** len(part), device=device)
    bits = ((subsets[:, None] >> torch.arange(len(part), device=device)) & 1).bool()  # (S, n_b)
    masked = torch.zeros((len(subsets), n), dtype=torch.bool, device=device)
    masked[:, part] = bits
    masked[:, later] = True
    return masked, bits


def block_elbo_enumerated(
    policy: MaskedDiffusionPolicy, batch: SequenceBatch, block_size: int, micro_batch_size: int | None = None
) -> Tensor:
    """``[B]`` the block ELBO computed exactly: for every block, every non-empty mask of it
    (earlier blocks clean, later blocks masked), weighted 1 / (|M| C(n_b, |M|))."""
    layout = _uniform_layout(batch, block_size)
    n, b = batch.completion_length, batch.batch_size
    total = torch.zeros(b, device=batch.device)
    for j, part in enumerate(layout):
        masked, bits = _block_views(layout, j, n, b, batch.device, nonempty=True)
        scored = torch.zeros_like(masked)
        scored[:, part] = bits
        size = bits.sum(-1, keepdim=True)
        binom = torch.tensor([math.comb(len(part), int(c)) for c in size.flatten()], device=batch.device)
        weights = scored.float() / (size * binom[:, None]).float()
        views = MaskedViews(masked[None].expand(b, -1, -1), scored[None].expand(b, -1, -1),
                            weights[None].expand(b, -1, -1))
        lp = score_views(policy, batch, views, micro_batch_size)
        total = total + (views.weights * lp).sum((1, 2))
    return total


def log_likelihood_block_orders(
    policy: MaskedDiffusionPolicy, batch: SequenceBatch, block_size: int, micro_batch_size: int | None = None
) -> Tensor:
    """``[B]`` log p(o|q) of block-by-block decoding in a uniformly random order inside each block,
    exactly: sum over blocks of the order-averaged log-likelihood of the block given the clean
    earlier blocks (later blocks masked), each by the dynamic programme of
    ``estimators.exact.log_likelihood_all_orders`` over the block's 2^n_b revealed sets."""
    layout = _uniform_layout(batch, block_size)
    n, b = batch.completion_length, batch.batch_size
    total = torch.zeros(b, device=batch.device)
    for j, part in enumerate(layout):
        masked, bits = _block_views(layout, j, n, b, batch.device, nonempty=False)  # row s: bits = masked set
        views = MaskedViews(masked[None].expand(b, -1, -1), masked[None].expand(b, -1, -1),
                            masked.float()[None].expand(b, -1, -1))
        lp = score_views(policy, batch, views, micro_batch_size)  # (B, 2^n_b, L)
        k = len(part)
        # g(S) over revealed sets S; row s of the views masks the set s, i.e. reveals its complement
        full = 2**k - 1
        g = [torch.zeros(b, device=lp.device, dtype=lp.dtype)]
        for s in range(1, 2**k):
            terms = [g[s ^ (1 << i)] + lp[:, full ^ (s ^ (1 << i)), part[i]] for i in range(k) if s >> i & 1]
            g.append(torch.logsumexp(torch.stack(terms, -1), -1))
        total = total + g[-1] - math.lgamma(k + 1)
    return total
