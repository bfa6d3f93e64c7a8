"""DMPO's replay of recent rollout batches (``objectives.replay``): exact weights and resampling."""

from __future__ import annotations

import torch

from ddrl.batch import SequenceBatch
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.objectives.dmpo import DMPO, DMPOConfig, DMPOState
from ddrl.objectives.replay import (
    ReplayPool,
    prompt_keys,
    resample_rows,
    systematic_resample,
)
from tests.conftest import batch_for
from tests.test_objectives import elbo, run_two_ranks


def ctx(**kwargs) -> ObjectiveContext:
    return ObjectiveContext(policy=None, estimator=elbo(), **kwargs)  # type: ignore[arg-type]


def test_prompt_keys_see_the_prompt_not_its_padding():
    batch = SequenceBatch.from_parts(
        torch.tensor([[9, 9, 1, 2], [1, 2, 0, 0], [0, 1, 2, 3], [9, 2, 1, 3]]),
        torch.zeros(4, 2, dtype=torch.long),
        torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]).bool(),
    )
    keys = prompt_keys(batch).tolist()
    assert keys[0] != keys[1] and keys[2] == prompt_keys(batch_for([1, 2, 3], torch.zeros(1, 2, dtype=torch.long)))[0]
    assert len(set(keys)) == 4
    again = SequenceBatch.from_parts(torch.tensor([[1, 2]]), torch.zeros(1, 2, dtype=torch.long))
    assert prompt_keys(again)[0] == keys[0]  # left padding is not part of the prompt


def test_systematic_resampling_draws_each_row_floor_or_ceil_of_its_share_and_exactly_on_average():
    w = torch.tensor([0.05, 0.4, 0.0, 0.25, 0.3])
    n, grid = 7, 1000
    counts = torch.zeros(5, dtype=torch.float64)
    for k in range(grid):  # the offset u swept over [0, 1): the average count is exact up to 1/grid
        g = torch.Generator().manual_seed(k)
        picks = systematic_resample(w, n, g)
        c = torch.bincount(picks, minlength=5).double()
        share = n * w.double() / w.sum()
        assert bool(((c >= share.floor()) & (c <= share.ceil())).all()), (c, share)
        counts += c
    torch.testing.assert_close(counts / grid, n * w.double() / w.sum(), atol=0.02, rtol=0)
    assert counts[2] == 0  # a zero weight is never drawn


def test_resampled_rows_stand_for_all_rows_in_expectation():
    a = torch.tensor([0.3, -0.1, 0.0, 0.5, -0.2, 0.1])
    f = torch.tensor([1.0, 2.0, 3.0, -1.0, 0.5, 4.0])  # any per-row loss
    total, draws = 0.0, 4000
    for k in range(draws):
        rows, adv = resample_rows(a, 4, torch.Generator().manual_seed(k))
        assert rows.shape == (4,) and abs(float(adv.abs().sum()) - float(a.abs().sum())) < 1e-6
        total += float((adv * f[rows]).sum())
    assert abs(total / draws - float((a * f).sum())) < 0.01
    rows, adv = resample_rows(torch.zeros(3), 4)
    assert rows.numel() == 0 and adv.numel() == 0


def rollout(prompts: list[list[int]], completions: list[list[int]], rewards: list[float], ids: list[int]) -> RolloutBatch:
    batch = SequenceBatch.cat([batch_for(p, torch.tensor([c])) for p, c in zip(prompts, completions)])
    return RolloutBatch(batch, torch.tensor(rewards), torch.tensor(ids))


A, B = [0, 2, 1], [1, 1, 0]


def test_pooled_weights_are_self_normalised_per_prompt_over_every_pooled_batch():
    alpha = 0.5
    objective = DMPO(DMPOConfig(alpha=alpha, replay=3))
    first = rollout([A, A, B, B], [[0, 1], [1, 1], [2, 2], [0, 0]], [1.0, 0.0, 0.5, 0.2], [0, 0, 1, 1])
    second = rollout([B, B, A, A], [[1, 0], [2, 1], [0, 0], [1, 2]], [0.3, 0.9, 0.1, 0.7], [2, 2, 3, 3])
    log_rnd = [torch.tensor([0.2, -0.4, 0.1, 0.3]), torch.tensor([-0.2, 0.5, 0.0, -0.1])]
    w1 = objective.weigh(first, DMPOState(log_rnd[0]), ctx())
    assert w1.state.replay_advantages.shape == (4, 0) and w1.metrics["replay_batches"] == 0
    w2 = objective.weigh(second, DMPOState(log_rnd[1]), ctx())
    # by hand: prompt A has rows 0, 1 of the first batch and 2, 3 of the second; B the others
    tilt1 = log_rnd[0].double() + first.rewards.double() / alpha
    tilt2 = log_rnd[1].double() + second.rewards.double() / alpha
    a = torch.softmax(torch.cat([tilt2[2:], tilt1[:2]]), 0)
    b = torch.softmax(torch.cat([tilt2[:2], tilt1[2:]]), 0)
    torch.testing.assert_close(w2.state.advantages.double(), torch.cat([b[:2], a[:2]]), rtol=0, atol=1e-6)
    # row i of the current batch carries row i of the earlier one
    torch.testing.assert_close(w2.state.replay_advantages[:, 0].double(), torch.cat([a[2:], b[2:]]), rtol=0, atol=1e-6)
    assert w2.metrics["replay_batches"] == 1 and w2.metrics["replay_groups"] == 2


def test_prompts_that_do_not_repeat_keep_the_loss_weight_of_one_batch():
    objective = DMPO(DMPOConfig(alpha=1.0, replay=2))
    objective.weigh(rollout([A, A], [[0, 1], [1, 1]], [1.0, 0.0], [0, 0]), DMPOState(torch.zeros(2)), ctx())
    w = objective.weigh(rollout([B, B], [[0, 1], [2, 1]], [0.0, 1.0], [1, 1]), DMPOState(torch.zeros(2)), ctx()).state
    total = float(w.advantages.sum() + w.replay_advantages.sum())
    assert abs(total - 1.0) < 1e-6  # two groups in the pool, one in the batch: each pooled group weighs 1/2
    assert abs(float(w.advantages.sum()) - 0.5) < 1e-6


def test_loss_rows_are_the_pool_or_a_resample_of_the_batchs_size():
    objective = DMPO(DMPOConfig(alpha=1.0, replay=3, replay_rows="all"))
    for k in range(3):
        r = rollout([A, A, B, B], [[k, 1], [1, k], [2, 2], [0, k]], [1.0, 0.0, 0.5, float(k)], [0, 0, 1, 1])
        state = objective.weigh(r, DMPOState(torch.zeros(4)), ctx()).state
    chunk = slice(2, 4)  # a chunk of the rollout batch: its rows and the same rows of the pooled batches
    seqs, adv = objective.loss_rows(r.index(chunk), state.index(chunk), ctx())
    assert seqs.batch_size == 6 and torch.equal(seqs.completion_ids[:2], r.batch.completion_ids[2:])
    assert torch.equal(seqs.completion_ids[2:4], torch.tensor([[2, 2], [0, 1]]))  # batch k = 1 (newest first)
    assert torch.equal(seqs.completion_ids[4:], torch.tensor([[2, 2], [0, 0]]))  # batch k = 0
    objective.config = DMPOConfig(alpha=1.0, replay=3)  # resample
    seqs2, adv2 = objective.loss_rows(r.index(chunk), state.index(chunk), ctx(generator=torch.Generator().manual_seed(0)))
    assert seqs2.batch_size == 2 and abs(float(adv2.sum()) - float(adv.sum())) < 1e-6


def test_the_pool_is_normalised_over_every_process_with_one_pool_per_process():
    objectives = [DMPO(DMPOConfig(alpha=0.5, replay=2)) for _ in range(2)]
    rewards = [torch.tensor([1.0, 0.2, 0.0, 0.9, 0.5, 0.3, 0.8, 0.0]), torch.tensor([0.1, 0.7, 0.4, 0.6, 0.2, 0.9, 0.3, 0.5])]
    log_rnd = torch.tensor([0.4, -0.3, 0.1, 0.2, -0.5, 0.0, 0.3, 0.6])
    prompts = [A, B, A, B, B, A, A, B]
    comps = [[k % 3, (k * 2) % 3] for k in range(8)]

    def weigh(rank: int, gather):
        rows = slice(4 * rank, 4 * rank + 4)
        out = []
        for t in range(2):
            r = rollout(prompts[rows], comps[rows], rewards[t][rows].tolist(), [0, 1, 0, 1])
            out.append(objectives[rank].weigh(r, DMPOState(log_rnd[rows] * (t + 1)), ctx(gather=gather, process_index=rank)))
        return out[-1].state

    states = run_two_ranks(weigh)
    got = torch.cat([torch.cat([s.advantages, s.replay_advantages[:, 0]]) for s in states]).double()
    # by hand over the 16 pooled rows, per prompt
    key = torch.tensor([0 if p == A else 1 for p in prompts])
    tilt = {t: log_rnd.double() * (t + 1) + rewards[t].double() / 0.5 for t in range(2)}
    want = []
    for rank in range(2):
        rows = slice(4 * rank, 4 * rank + 4)
        for t in (1, 0):
            for i in range(4 * rank, 4 * rank + 4):
                same = key == key[i]
                pool = torch.cat([tilt[1][same], tilt[0][same]])
                want.append(float(torch.exp(tilt[t][i] - torch.logsumexp(pool, 0))))
        del rows
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-6)


def test_the_pool_round_trips_through_a_checkpoints_tensors():
    objective = DMPO(DMPOConfig(alpha=1.0, replay=3))
    for k in range(4):
        r = rollout([A, B], [[k, 1], [1, k]], [1.0, float(k)], [0, 1])
        objective.weigh(r, DMPOState(torch.tensor([0.1 * k, -0.2])), ctx())
    saved = objective.state_dict()
    again = DMPO(DMPOConfig(alpha=1.0, replay=3))
    again.load_state_dict(saved)
    assert len(again.pool.batches) == 2
    for x, y in zip(objective.pool.batches, again.pool.batches):
        assert torch.equal(x.batch.completion_ids, y.batch.completion_ids) and torch.equal(x.log_rnd, y.log_rnd)
    pool = ReplayPool(1)
    pool.load_state_dict(saved)
    assert pool.batches == []  # replay 1 keeps nothing


def test_replay_one_is_the_unpooled_objective():
    r = rollout([A, A, B, B], [[0, 1], [1, 1], [2, 2], [0, 0]], [1.0, 0.0, 0.5, 0.2], [0, 0, 1, 1])
    plain = DMPO(DMPOConfig(alpha=0.5, replay=1))
    for _ in range(2):
        state = plain.weigh(r, DMPOState(torch.tensor([0.2, -0.4, 0.1, 0.3])), ctx()).state
    assert state.replay_advantages is None and plain.state_dict() == {}
