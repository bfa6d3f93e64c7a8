"""`benchmarks/distribution_matching.py --family` end to end on a budget of seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distribution_matching.py"


@pytest.mark.slow
def test_family_mode_trains_every_problem_and_its_floor_and_reports_the_ratios(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--family", "2", "--quick", "--steps", "8", "--processes", "1", "--methods", "dmpo", "published",
            "--out", str(tmp_path / "dm")]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("result: family_median_ratio_to_floor=") and "collapses=" in last
    assert "own_problem_kl_ratio=" in last
    report = json.loads((tmp_path / "dmpo_family_quick.json").read_text())
    assert (tmp_path / "dmpo_family_quick.png").is_file()
    rows = report["rows"]
    problems = {r["problem"] for r in rows}
    assert len(problems) == 3 and "own" in problems  # the benchmark's own problem and two generated ones
    assert {(r["problem"], r["method"]) for r in rows} == {(p, m) for p in problems for m in ("floor", "dmpo", "published")}
    assert all(math.isfinite(r["ratio_to_floor"]) and r["kl_ref"] > 0 for r in rows)
    assert all(r["ratio_to_floor"] == 1.0 for r in rows if r["method"] == "floor")
    median = float(last.split("family_median_ratio_to_floor=")[1].split()[0])
    mine = sorted(r["ratio_to_floor"] for r in rows if r["method"] == "dmpo" and r["problem"] != "own")
    assert median == pytest.approx(sum(mine) / 2, abs=0.006)  # the median of the two generated problems
