"""The installed plugin seen through ddrl's registry and CLI, with ddrl's conformance kit."""

from __future__ import annotations

import pytest

from ddrl.testing import check_listed, check_objective, train_briefly


def test_tracerl_keeps_the_objective_contract():
    metrics = check_objective("tracerl", distribution="ddrl-tracerl")
    assert metrics["trace_steps"] >= 1


def test_ddrl_plugins_lists_tracerl_with_its_distribution():
    check_listed("objectives", "tracerl", "ddrl-tracerl", "ddrl_tracerl.objective:TraceRL")


@pytest.mark.slow
def test_ddrl_train_with_tracerl_runs_to_the_end_on_the_tiny_model(tmp_path):
    metrics, config = train_briefly(tmp_path, "--objective", "tracerl", "--model", "tiny", "--task", "countdown")
    assert config["objective"]["name"] == "tracerl" and config["sampler"]["name"] == "block"
    assert all(m["trace_steps"] == 1.0 for m in metrics)  # 8 sampler steps merged by s = 8
