"""The installed plugin seen through ddrl's registry and CLI, with ddrl's conformance kit."""

from __future__ import annotations

import pytest

from ddrl.testing import check_listed, check_objective, train_briefly


def test_wd1_keeps_the_objective_contract():
    metrics = check_objective("wd1", distribution="ddrl-wd1")
    assert {"coefficient_abs_mean", "log_likelihood"} <= set(metrics)


def test_ddrl_plugins_lists_wd1_with_its_distribution():
    check_listed("objectives", "wd1", "ddrl-wd1", "ddrl_wd1.objective:WD1")


@pytest.mark.slow
def test_ddrl_train_with_wd1_runs_to_the_end_on_the_tiny_model(tmp_path):
    _, config = train_briefly(tmp_path, "--objective", "wd1", "--model", "tiny", "--task", "countdown")
    assert config["objective"]["name"] == "wd1" and config["estimator"]["name"] == "one_step"
