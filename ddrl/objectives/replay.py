"""Replay of recent rollout batches for importance-weighted objectives (DMPO's ``replay``).

A completion o drawn from the proposal q_t of rollout batch t is an importance sample of the tilted
target p*(o|q) ∝ p_ref(o|q) exp(r/alpha) with the weight p_ref(o) exp(r/alpha) / q_t(o), and that
weight never changes: the target is fixed and q_t is the proposal it was drawn from (its density was
recorded when it was weighed, ``log_rnd = log p_ref - log q_t``). So the completions of the last few
rollout batches can join the current one: self-normalised over every pooled completion of the same
prompt, the weights still estimate expectations under p*, from several times more draws than one
batch holds (multiple importance sampling with each draw weighed against its own proposal).

The pool keeps, on each process, the rows of the ``size - 1`` previous rollout batches in the same
row layout as the current one; current row i carries the pooled advantages of row i of every
earlier batch (``DMPOState.replay_advantages``), so cutting a rollout batch into chunks cuts its
replayed rows with it. ``resample_rows`` keeps the loss's cost that of one batch: the loss rows are
drawn from the pooled rows in proportion to |advantage| (systematic resampling), each carrying an
equal share of the total, which leaves the loss's expectation unchanged.

Prompts are matched by content (``prompt_keys``): the same prompt in two rollout batches is one group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.rows import RowState

_PRIME = (1 << 61) - 1


def prompt_keys(batch: SequenceBatch) -> Tensor:
    """``[B]`` int64 key of each row's prompt (its real tokens, padding ignored): equal prompts get
    equal keys on every process and in every rollout batch (a polynomial hash mod 2^61 - 1)."""
    keys = []
    for ids, mask in zip(batch.prompt_ids.tolist(), batch.prompt_mask.tolist()):
        h = 7
        for token, real in zip(ids, mask):
            if real:
                h = (h * 1_000_003 + token + 1) % _PRIME
        keys.append(h)
    return torch.tensor(keys, dtype=torch.long, device=batch.prompt_ids.device)


@dataclass
class PooledBatch(RowState):
    """One earlier rollout batch of this process, as it was weighed.

    Attributes:
        batch: its prompts and completions, ``B`` rows (the layout of every rollout batch).
        rewards: ``[B]`` rewards.
        log_rnd: ``[B]`` log p_ref(o) - log q(o) against the proposal it was drawn from.
        keys: ``[B]`` ``prompt_keys``.
    """

    batch: SequenceBatch
    rewards: Tensor
    log_rnd: Tensor
    keys: Tensor

    FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        """Flat ``{name: tensor}`` for a checkpoint."""
        out = {f"{prefix}.{f}": getattr(self.batch, f).contiguous().cpu() for f in self.FIELDS}
        out.update({f"{prefix}.rewards": self.rewards.cpu(), f"{prefix}.log_rnd": self.log_rnd.cpu(),
                    f"{prefix}.keys": self.keys.cpu()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str) -> PooledBatch:
        batch = SequenceBatch(*(tensors[f"{prefix}.{f}"] for f in cls.FIELDS))
        return cls(batch, tensors[f"{prefix}.rewards"], tensors[f"{prefix}.log_rnd"], tensors[f"{prefix}.keys"])


class ReplayPool:
    """The ``size - 1`` most recent rollout batches of this process (oldest first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.batches: list[PooledBatch] = []

    def fits(self, rows: int) -> list[PooledBatch]:
        """The pooled batches with ``rows`` rows (a batch of another layout is never pooled)."""
        return [b for b in self.batches if len(b.rewards) == rows]

    def push(self, batch: PooledBatch) -> None:
        if self.size > 1:
            self.batches = [*self.batches, batch][-(self.size - 1):]

    def state_dict(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for j, b in enumerate(self.batches):
            out.update(b.tensors(f"replay.{j}"))
        return out

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        count = len({k.split(".")[1] for k in tensors if k.startswith("replay.")})
        batches = [PooledBatch.from_tensors(tensors, f"replay.{j}") for j in range(count)]
        self.batches = batches[len(batches) - (self.size - 1):] if self.size > 1 else []


def systematic_resample(weights: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``[n]`` long indices drawn from ``weights [N]`` (non-negative, not all zero) by systematic
    resampling: one uniform offset, n evenly spaced points on the cumulative weights, so index i
    is drawn floor(n w_i / sum w) or one more times."""
    w = weights.double().cpu()
    device = generator.device if generator is not None else None
    u = (torch.rand((), generator=generator, device=device).cpu().double() + torch.arange(n, dtype=torch.float64)) / n
    cdf = torch.cumsum(w / w.sum(), 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp(max=w.numel() - 1).to(weights.device)


def resample_rows(advantages: Tensor, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Rows and advantages of a loss of ``n`` rows standing for all of ``advantages [N]``: ``n``
    rows drawn in proportion to |a| (``systematic_resample``), each with advantage
    sign(a) * sum|a| / n, so that E[sum over the drawn rows of a * f] = sum_i a_i f_i for any f.
    Returns (``[n]`` row indices, ``[n]`` advantages); no rows when every advantage is 0."""
    size = advantages.abs()
    total = size.sum()
    if n == 0 or float(total) == 0.0:
        empty = torch.zeros(0, dtype=torch.long, device=advantages.device)
        return empty, advantages.new_zeros(0)
    rows = systematic_resample(size, n, generator)
    return rows, torch.sign(advantages[rows]) * total / n
