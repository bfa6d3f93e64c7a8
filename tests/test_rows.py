"""Row-aligned state: one way to cut a batch into chunks and join them again (``ddrl.rows``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import MaskedViews
from ddrl.estimators.masks import antithetic_masks, one_step_masks
from ddrl.objectives.base import RolloutBatch
from ddrl.rows import RowState, summed
from ddrl.samplers.base import SampleOutput
from ddrl.samplers.fast import FastSampleOutput

CHUNKS = (slice(0, 1), slice(1, 3), slice(3, 4))


@dataclass
class Example(RowState):
    log_rnd: Tensor
    old_logp: Tensor
    views: list[MaskedViews]
    one_step: MaskedViews
    scale: Tensor  # 0-dim: not a row value
    per_source: dict[str, Tensor]
    missing: Tensor | None = None
    count: int = summed()


def same_views(a: MaskedViews, b: MaskedViews) -> bool:
    prompts = (a.prompt_masked is None) == (b.prompt_masked is None)
    if prompts and a.prompt_masked is not None:
        prompts = torch.equal(a.prompt_masked, b.prompt_masked)
    return prompts and all(
        torch.equal(getattr(a, f), getattr(b, f)) for f in ("completion_masked", "scored", "weights")
    )


def test_a_row_state_cut_into_chunks_and_joined_is_the_same_state():
    g = torch.Generator().manual_seed(10)
    valid = torch.ones(4, 3, dtype=torch.bool)
    state = Example(
        log_rnd=torch.arange(4.0),
        old_logp=torch.randn(4, 2, 3, generator=g),
        views=[antithetic_masks(valid, 2, g), antithetic_masks(valid, 4, g)],
        one_step=one_step_masks(valid, torch.ones(4, 2, dtype=torch.bool), 0.5, g),
        scale=torch.tensor(2.0),
        per_source={"format": torch.tensor([0.0, 1.0, 0.5, 0.25])},
        count=3,
    )
    chunks = [state.index(rows) for rows in CHUNKS]
    middle = chunks[1]
    assert torch.equal(middle.log_rnd, torch.tensor([1.0, 2.0]))
    assert torch.equal(middle.old_logp, state.old_logp[1:3])
    assert torch.equal(middle.views[1].weights, state.views[1].weights[1:3])
    assert torch.equal(middle.one_step.prompt_masked, state.one_step.prompt_masked[1:3])
    assert torch.equal(middle.per_source["format"], torch.tensor([1.0, 0.5]))
    assert middle.scale.item() == 2.0 and middle.missing is None and middle.count == 3

    joined = Example.cat(chunks)
    for name in ("log_rnd", "old_logp", "scale"):
        assert torch.equal(getattr(joined, name), getattr(state, name)), name
    assert all(same_views(a, b) for a, b in zip(joined.views, state.views))
    assert same_views(joined.one_step, state.one_step)
    assert torch.equal(joined.per_source["format"], state.per_source["format"])
    assert joined.missing is None
    assert joined.count == 9  # a summed field adds up over the chunks


def test_joining_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        Example.cat([])


def chunk(prompts: list[list[int]], completions: list[list[int]], seed: int) -> RolloutBatch:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    batch = SequenceBatch.from_parts(ids, torch.tensor(completions), mask)
    steps = torch.randperm(8, generator=torch.Generator().manual_seed(seed))[: 2 * len(completions)].view(-1, 2)
    sample = FastSampleOutput(batch, steps, torch.rand(len(completions), 2), [torch.zeros(len(completions), 2)],
                              nfe=3, num_steps=2, full_passes=1.5)
    n = len(completions)
    return RolloutBatch(batch, torch.arange(float(n)), torch.full((n,), seed), sample, {"format": torch.ones(n)})


def test_rollout_chunks_with_different_prompt_widths_join_left_padded_and_keep_the_samplers_record():
    a = chunk([[5, 6, 7], [8]], [[1, 2], [3, 4]], seed=0)
    b = chunk([[9, 9]], [[2, 2]], seed=1)
    joined = RolloutBatch.cat([a, b])
    assert joined.batch.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 9]]
    assert joined.batch.prompt_mask.tolist() == [[True] * 3, [False, False, True], [False, True, True]]
    assert torch.equal(joined.group_ids, torch.tensor([0, 0, 1]))
    sample = joined.sample
    assert isinstance(sample, FastSampleOutput)  # the subclass and its own fields survive
    assert sample.full_passes == 3.0 and sample.nfe == 6 and sample.num_steps == 2
    assert torch.equal(sample.unmask_step, torch.cat([a.sample.unmask_step, b.sample.unmask_step]))
    assert torch.equal(sample.batch.prompt_ids, joined.batch.prompt_ids)
    assert joined.reward_components["format"].shape == (3,)
    # and back: a chunk's rows of the joined batch (prompt columns of the padded width)
    again = joined.index(slice(2, 3))
    assert torch.equal(again.sample.token_logprobs, b.sample.token_logprobs)
    assert torch.equal(again.batch.completion_ids, b.batch.completion_ids)
    assert again.batch.prompt_ids.tolist() == [[0, 9, 9]]


def test_a_plain_sample_output_is_rows_too():
    batch = SequenceBatch.from_parts(torch.zeros(3, 1, dtype=torch.long), torch.tensor([[1], [2], [3]]))
    out = SampleOutput(batch, None, torch.tensor([[0.1], [0.2], [0.3]]), nfe=4, num_steps=1)
    part = out.index(torch.tensor([2, 0]))
    assert part.completion_ids.tolist() == [[3], [1]] and part.unmask_step is None and part.nfe == 4
    assert torch.equal(part.token_logprobs, torch.tensor([[0.3], [0.1]]))
