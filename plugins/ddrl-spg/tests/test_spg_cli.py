"""The installed plugin seen through ddrl's own CLI (typer's CliRunner on ``ddrl.cli.app.app``)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from ddrl.cli.app import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})


def listed(output: str) -> dict[tuple[str, str], list[str]]:
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines()]
    return {(r[0], r[1]): r for r in rows if len(r) == 5}


def test_ddrl_plugins_lists_spg_and_its_estimator_with_their_distribution():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    rows = listed(result.output)
    objective, estimator = rows[("objectives", "spg")], rows[("estimators", "blockwise")]
    assert objective[2].startswith("ddrl-spg") and objective[3] == "ddrl_spg.objective:SPG" and objective[4] == "ok"
    assert estimator[2].startswith("ddrl-spg") and estimator[3] == "ddrl_spg.estimator:BlockwiseEstimator"


@pytest.mark.slow
def test_ddrl_train_with_spg_runs_to_the_end_on_the_tiny_model(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--objective", "spg", "--model", "tiny", "--task", "countdown",
                    "--set", "train.max_steps=2", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["loss"] == m["loss"] and m["upper"] == m["upper"] for m in steps)  # finite, not NaN
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["objective"]["name"] == "spg" and config["estimator"]["name"] == "blockwise"
    assert (out / "final" / "model.safetensors").is_file()
