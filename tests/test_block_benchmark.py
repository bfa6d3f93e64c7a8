"""The distribution-matching benchmark with a block-diffusion `tiny` (``--block-size B``): its exact
KL is that of block-by-block decoding (``block_sequence_log_probs``), not the any-order law."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddrl.config import build_config
from ddrl.enumeration import all_sequences, block_sequence_log_probs, kl_divergence, sequence_log_probs, tilted_log_target
from ddrl.training.trainer import Trainer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "distribution_matching.py"


@pytest.fixture(scope="module")
def ep():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import exact_problems

        yield exact_problems
    finally:
        sys.path.remove(str(BENCHMARKS))


def brute_force_kl(policy, examples, log_targets) -> float:
    """mean over prompts of sum_o p*(o) (log p*(o) - log p_theta(o)), p_theta by block decoding."""
    space = all_sequences(4, 4)
    kls = []
    for ex, log_target in zip(examples, log_targets):
        log_p = block_sequence_log_probs(policy, list(ex.columns["prompt_ids"]), space, block_size=2)
        kls.append(float((log_target.exp() * (log_target - log_p)).sum()))
    return sum(kls) / len(kls)


def test_the_tracker_measures_the_block_models_own_distribution(ep, tmp_path):
    problem = ep.block_problem(ep.OWN_PROBLEM, 2)
    registry = ep.registry_with_floor()
    raw = ep.recipe(problem, {"name": "dmpo", "alpha": problem.alpha},
                    {"name": "block_elbo", "num_samples": 2, "block_size": 2}, "ancestral", 0, 2, tmp_path / "run", 4)
    assert raw["sampler"]["block_length"] == 2 and raw["model"]["architecture"]["block_size"] == 2
    trainer = Trainer(build_config(raw, registry=registry), registry)
    assert trainer.policy.block_size == 2
    tracker = ep.ExactTracker(problem, every=1)
    tracker.setup(trainer)

    # p* by brute force from block_sequence_log_probs of the initial model (= p_ref)
    space = all_sequences(4, 4)
    examples = trainer.examples
    log_targets, kl_ref = [], 0.0
    for ex in examples:
        prompt = list(ex.columns["prompt_ids"])
        log_ref = block_sequence_log_probs(trainer.policy, prompt, space, block_size=2)
        reward = (space == torch.tensor(ex.answer)).double().mean(-1)
        log_targets.append(log_ref + reward / problem.alpha - torch.logsumexp(log_ref + reward / problem.alpha, 0))
        kl_ref += kl_divergence(log_targets[-1], log_ref) / len(examples)
    for (_, log_target, _), mine in zip(tracker.targets, log_targets):
        assert torch.allclose(log_target, mine, atol=1e-9)
    assert tracker.curve[0]["kl"] == pytest.approx(brute_force_kl(trainer.policy, examples, log_targets), abs=1e-9)
    assert tracker.kl_ref == pytest.approx(kl_ref, abs=1e-9) and kl_ref > 0.1

    # the any-order law of the same network is another distribution: routing matters
    any_order = sequence_log_probs(trainer.policy, list(examples[0].columns["prompt_ids"]), space)
    wrong = tilted_log_target(any_order, (space == torch.tensor(examples[0].answer)).double().mean(-1), problem.alpha)
    assert (wrong - log_targets[0]).abs().max() > 1e-3

    # after the weights move, measure() is still the brute-force KL against the fixed p*
    with torch.no_grad():
        for p in trainer.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    moved = tracker.measure(trainer, 1)["kl"]
    assert moved == pytest.approx(brute_force_kl(trainer.policy, examples, log_targets), abs=1e-9)
    assert abs(moved - tracker.curve[0]["kl"]) > 1e-4


def test_block_sizes_that_split_the_sampler_and_model_blocks_apart_are_refused(ep):
    for bad in (3, 4):  # 3 does not divide L = 4; 4 does not divide the 2-token prompt
        with pytest.raises(ValueError, match="must divide"):
            ep.block_problem(ep.OWN_PROBLEM, bad)
    bidirectional = ep.problem_spec(ep.OWN_PROBLEM)
    assert "block_size" not in bidirectional and "block_size" not in ep.OWN_PROBLEM.model()["architecture"]
    assert ep.problem_spec(ep.block_problem(ep.OWN_PROBLEM, 1))["block_size"] == 1


def test_block_mode_runs_end_to_end_and_prints_its_result_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--block-size", "2", "--steps", "4", "--processes", "1", "--out", str(tmp_path / "dm")]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("own-block2 floor seed 0: KL ratio") for line in lines)
    last = lines[-1]
    assert last.startswith("result: block_size=2 floor_kl_ratio=")
    fields = dict(f.split("=") for f in last.removeprefix("result: ").split())
    for key in ("dmpo_kl_ratio", "dmpo_ratio_to_floor", "dmpo_block_elbo_kl_ratio", "dmpo_block_elbo_ratio_to_floor"):
        assert float(fields[key]) > 0
