"""The installed plugin seen through ddrl's own CLI (typer's CliRunner on ``ddrl.cli.app.app``)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from ddrl.cli.app import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})


def test_ddrl_plugins_lists_wd1_with_its_distribution():
    result = invoke("plugins", "--group", "objectives")
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines()]
    row = next(r for r in rows if len(r) == 5 and r[1] == "wd1")
    assert row[2].startswith("ddrl-wd1") and row[3] == "ddrl_wd1.objective:WD1" and row[4] == "ok"


@pytest.mark.slow
def test_ddrl_train_with_wd1_runs_to_the_end_on_the_tiny_model(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--objective", "wd1", "--model", "tiny", "--task", "countdown",
                    "--set", "train.max_steps=2", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["loss"] == m["loss"] for m in steps)  # finite, not NaN
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["objective"]["name"] == "wd1" and config["estimator"]["name"] == "one_step"
    assert (out / "final" / "model.safetensors").is_file()
