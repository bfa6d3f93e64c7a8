"""Row-aligned state: containers whose fields share the batch's first dimension.

Rollouts are generated, scored and trained on in *chunks* of rows (micro-batches), while group
statistics need the whole local batch. Everything that travels with the rows — the batch itself,
what the sampler recorded, an objective's frozen state — therefore supports two operations:

    part  = state.index(rows)        # the given rows (a slice, an index tensor or a bool mask)
    whole = type(state).cat(parts)   # consecutive chunks joined along the rows

``RowState`` gives a dataclass both operations from its fields: a tensor with at least one
dimension, or an object with its own ``index``/``cat`` (``SequenceBatch``, ``MaskedViews``,
another ``RowState``), is sliced and joined along its rows, as is each entry of a list or dict of
them; ``None`` stays ``None``; anything else (a count, a 0-dim tensor) is not a row value: ``index``
keeps it and ``cat`` takes the first part's, or the sum of the parts for a field declared with
``summed()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, Sequence, TypeVar, runtime_checkable

import torch
from torch import Tensor

R = TypeVar("R", bound="RowState")

_SUMMED = "ddrl.rows.summed"


@runtime_checkable
class Rows(Protocol):
    """Anything that can be cut into rows and joined again."""

    def index(self, rows: Tensor | slice) -> Any: ...

    @classmethod
    def cat(cls, parts: list[Any]) -> Any: ...


def summed(default: int | float = 0) -> Any:
    """A dataclass field that is not a row value and adds up when chunks are joined (a count)."""
    return field(default=default, metadata={_SUMMED: True})


def index_rows(value: Any, rows: Tensor | slice) -> Any:
    """``value`` restricted to ``rows`` (see the module docstring for what counts as rows)."""
    if isinstance(value, Tensor):
        return value[rows] if value.dim() > 0 else value
    if isinstance(value, list):
        return [index_rows(v, rows) for v in value]
    if isinstance(value, dict):
        return {k: index_rows(v, rows) for k, v in value.items()}
    if isinstance(value, Rows) and not isinstance(value, type):
        return value.index(rows)
    return value


def cat_rows(values: Sequence[Any]) -> Any:
    """The chunks ``values`` joined along their rows (the first one's value if not rows)."""
    first = values[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(list(values)) if first.dim() > 0 else first
    if isinstance(first, list):
        return [cat_rows([v[i] for v in values]) for i in range(len(first))]
    if isinstance(first, dict):
        return {k: cat_rows([v[k] for v in values]) for k in first}
    if isinstance(first, Rows):
        return type(first).cat(list(values))
    return first


@dataclass
class RowState:
    """Base of a dataclass whose fields are row-aligned (``index`` and ``cat`` from its fields)."""

    def index(self: R, rows: Tensor | slice) -> R:
        """The state of the given rows."""
        return replace(self, **{f.name: index_rows(getattr(self, f.name), rows) for f in fields(self) if f.init})

    @classmethod
    def cat(cls: type[R], parts: list[R]) -> R:
        """Consecutive chunks' states joined along their rows."""
        if not parts:
            raise ValueError(f"{cls.__name__}.cat needs at least one part")
        joined = {}
        for f in fields(parts[0]):
            if not f.init:
                continue
            values = [getattr(p, f.name) for p in parts]
            joined[f.name] = sum(values) if f.metadata.get(_SUMMED) else cat_rows(values)
        return replace(parts[0], **joined)
