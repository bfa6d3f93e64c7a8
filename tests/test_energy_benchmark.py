"""`benchmarks/energy.py` end to end on a budget of seconds: the report, its files and the result line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "energy.py"


def energy(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_energy_benchmark_reports_runs_floors_and_ceiling_then_merges(tmp_path):
    common = ["--steps", "2", "--reuse", "1", "--batch", "16", "--every", "1", "--curve-samples", "32",
              "--eval-samples", "64", "--d-model", "16"]
    pub = energy(*common, "--targets", "published", "--objectives", "dmpo", "rerf", "--long-steps", "3",
                 "--long-eval-samples", "128", "--ceiling", "2", "--out", str(tmp_path / "pub"))
    assert pub.returncode == 0, pub.stderr
    last = pub.stdout.strip().splitlines()[-1]
    assert last.startswith("result: dmpo_ess=") and "dmpo_kl=" in last and "mode_balance=nan" in last
    report = json.loads((tmp_path / "pub.json").read_text())
    assert (tmp_path / "pub.png").is_file()
    runs = report["runs"]
    assert [(r["objective"], r["steps"], r["eval_samples"]) for r in runs][-1] == ("dmpo", 3, 128)
    assert [r["objective"] for r in runs] == ["dmpo", "rerf", "dmpo"]
    assert runs[-1]["headline"] and not any(r["headline"] for r in runs[:-1])
    assert sorted(f["num_samples"] for f in report["floors"]) == [64, 128]  # one floor per N
    assert [c["positions"] for c in report["ceilings"]] == ["absolute", "rotary"]
    dmpo_ess = float(last.split("dmpo_ess=")[1].split()[0])
    assert dmpo_ess == pytest.approx(runs[-1]["metrics"]["ess"], abs=5e-4)  # the headline, not a short run
    for r in runs:
        assert 0 < r["metrics"]["ess"] <= 1 and r["train_cpu_seconds"] > 0 and r["curve"]

    crit = energy(*common, "--targets", "critical", "--objectives", "dmpo", "--long-steps", "0",
                  "--out", str(tmp_path / "crit"))
    assert crit.returncode == 0, crit.stderr
    merged = energy("--merge", str(tmp_path / "pub.json"), str(tmp_path / "crit.json"), "--out", str(tmp_path / "all"))
    assert merged.returncode == 0, merged.stderr
    both = json.loads((tmp_path / "all.json").read_text())
    assert len(both["runs"]) == len(runs) + 1 and "critical" in both["table"]
    balance = float(merged.stdout.strip().splitlines()[-1].split("mode_balance=")[1])
    assert 0 <= balance <= 1  # the critical run's mode balance now fills the result line
