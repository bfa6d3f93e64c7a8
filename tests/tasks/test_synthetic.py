"""The `synthetic` task: seeded reward families, standardised exactly, checked term by term by hand."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from ddrl.enumeration import all_sequences
from ddrl.registry import Registry
from ddrl.rewards.synthetic import synthetic_reward, synthetic_values, term_values
from ddrl.tasks.synthetic import TERM_KINDS, random_spec
from ddrl.testing import build, check_task


@pytest.mark.parametrize("kind", [*TERM_KINDS, "mixed"])
def test_every_reward_is_standardised_over_all_completions(kind):
    spec = random_spec(kind, 4, 4, random.Random(kind))
    values = synthetic_values(spec, all_sequences(4, 4))
    assert abs(float(values.mean())) < 1e-9
    assert float(values.std()) == pytest.approx(1.0, abs=1e-9)
    assert len(spec["terms"]) == (2 if kind == "mixed" else 1)


def test_terms_by_hand():
    o = torch.tensor([[2, 0, 2, 1]])
    table = [[0.1 * (d + 1) * (v + 1) for v in range(3)] for d in range(4)]
    # position: table[0][2] + table[1][0] + table[2][2] + table[3][1] = 0.3 + 0.2 + 0.9 + 0.8
    assert float(term_values({"kind": "position", "table": table}, o)[0]) == pytest.approx(2.2)
    # pairs (0, 2) equal, (1, 3) not: 1.5 * 1 + (-2) * 0
    pairs = {"kind": "pairs", "pairs": [[0, 2], [1, 3]], "coefficients": [1.5, -2.0]}
    assert float(term_values(pairs, o)[0]) == pytest.approx(1.5)
    # count of token 2 is 2 -> values[2]
    assert float(term_values({"kind": "count", "token": 2, "values": [0.0, 0.5, -0.7, 1.0, 2.0]}, o)[0]) == -0.7
    # parity over positions {0, 1, 3}, token bits [1, 0, 1]: tokens 2, 0, 1 -> bits 1, 1, 0, even -> +c
    parity = {"kind": "parity", "subset": [0, 1, 3], "bits": [1, 0, 1], "coefficient": -1.0}
    assert float(term_values(parity, o)[0]) == -1.0
    # tokens 0, 0, 0 -> bits 1, 1, 1, odd -> -c
    assert float(term_values(parity, torch.tensor([[0, 0, 2, 0]]))[0]) == 1.0


def test_the_registered_reward_equals_the_pure_function_and_seeds_fix_the_problem():
    registry = Registry()
    task = build(registry, "tasks", "synthetic", reward="mixed", seed=7)
    again = build(registry, "tasks", "synthetic", reward="mixed", seed=7)
    other = build(registry, "tasks", "synthetic", reward="mixed", seed=8)
    examples = task.split("train")
    assert examples == again.split("train") and examples != other.split("train")
    assert examples[0].columns["reward"] != examples[1].columns["reward"]  # one reward per prompt
    ids = [list(row) for row in itertools.islice(itertools.product(range(4), repeat=4), 0, 256, 37)]
    spec = examples[1].columns["reward"]
    got = synthetic_reward([""] * len(ids), [""] * len(ids), completion_ids=ids, reward=[spec] * len(ids))
    want = synthetic_values(spec, torch.tensor(ids)).tolist()
    assert got == pytest.approx(want, abs=1e-12)


def test_synthetic_passes_the_task_conformance_kit():
    registry = Registry()
    policy = build(registry, "models", "tiny", charset=None,
                   architecture={"vocab_size": 5, "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32})
    check_task("synthetic", distribution="ddrl", options={"reward": "parity", "length": 3}, policy=policy)
