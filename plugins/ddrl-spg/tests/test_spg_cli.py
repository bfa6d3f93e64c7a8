"""The installed plugin seen through ddrl's registry and CLI, with ddrl's conformance kit."""

from __future__ import annotations

import math

import pytest

from ddrl.testing import check_estimator, check_listed, check_objective, train_briefly


def test_spg_keeps_the_objective_contract():
    metrics = check_objective("spg", distribution="ddrl-spg")
    assert {"elbo", "upper", "frac_positive"} <= set(metrics)


def test_blockwise_keeps_the_estimator_contract():
    check_estimator("blockwise", distribution="ddrl-spg", options={"num_samples": 2, "block_length": 2})


def test_ddrl_plugins_lists_spg_and_its_estimator_with_their_distribution():
    check_listed("objectives", "spg", "ddrl-spg", "ddrl_spg.objective:SPG")
    check_listed("estimators", "blockwise", "ddrl-spg", "ddrl_spg.estimator:BlockwiseEstimator")


@pytest.mark.slow
def test_ddrl_train_with_spg_runs_to_the_end_on_the_tiny_model(tmp_path):
    metrics, config = train_briefly(tmp_path, "--objective", "spg", "--model", "tiny", "--task", "countdown")
    assert all(math.isfinite(m["upper"]) for m in metrics)
    assert config["objective"]["name"] == "spg" and config["estimator"]["name"] == "blockwise"
