"""Memory-lean log-probabilities at a large vocabulary: the head on the scored rows only, in chunks.

Scoring a masked view needs log pi(view)_{d, o_d} at the scored positions only. The naive way
applies the LM head to every position and takes a log-softmax over V: ``[n, T, V]`` logits (at
LLaDA's V = 126,464, 0.5 MB per position in float32) that live until the backward pass. Here the
hidden states of the scored positions are gathered first, and the log-softmax over V is computed
``chunk`` rows at a time by a custom autograd function that keeps only the per-row logsumexp and
recomputes each chunk's logits in the backward pass, so a ``[chunk, V]`` float32 block is the most
that ever exists:

    log p(t | h) = (W h)_t - logsumexp_v (W h)_v          (the mask token's logit excluded)
    d/dh = W^T (e_t - softmax(W h)) g,      d/dW = (e_t - softmax(W h)) h^T g

Values equal the naive computation's (same dtypes: logits in the head's dtype, the log-softmax in
float32); tests compare both, and their gradients, in float64 on tiny shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddrl.models.base import suppress_token

CHUNK_ELEMENTS = 2**24  # float32 logits per chunk: 64 MiB (132 rows at V = 126,464)


def default_chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab_size)


class _TargetLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, mask_id: int, chunk: int) -> Tensor:  # type: ignore[override]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for lo in range(0, hidden.shape[0], chunk):
            logits = _chunk_logits(hidden[lo : lo + chunk], weight, mask_id)  # (c, V) float32
            lse[lo : lo + chunk] = torch.logsumexp(logits, -1)
            out[lo : lo + chunk] = logits.gather(-1, targets[lo : lo + chunk, None]).squeeze(-1) - lse[lo : lo + chunk]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.mask_id, ctx.chunk = mask_id, chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for lo in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[lo : lo + ctx.chunk]
            logits = _chunk_logits(h, weight, ctx.mask_id)
            d = -(logits - lse[lo : lo + ctx.chunk, None]).exp()  # -softmax, (c, V)
            d.scatter_add_(-1, targets[lo : lo + ctx.chunk, None], torch.ones_like(d[:, :1]))
            d = d * grad[lo : lo + ctx.chunk, None]  # d out / d logits, times the incoming gradient
            if grad_h is not None:
                grad_h[lo : lo + ctx.chunk] = (d.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += d.T @ h.float()
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def _chunk_logits(hidden: Tensor, weight: Tensor, mask_id: int) -> Tensor:
    """``[c, V]`` float32 logits of ``hidden [c, D]``, computed in the head's dtype like the model's
    own forward, with the mask token's logit at the most negative finite value."""
    return suppress_token(torch.nn.functional.linear(hidden, weight), mask_id).float()


def target_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, mask_id: int, chunk_rows: int | None = None
) -> Tensor:
    """``[M]`` float32 log-softmax of ``weight @ hidden`` at ``targets``: ``hidden [M, D]``,
    ``weight [V, D]`` (the LM head, no bias), ``targets [M]``; ``chunk_rows`` rows at a time."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    return _TargetLogProbs.apply(hidden, weight, targets, mask_id, chunk)
