"""`benchmarks/memory.py --tiny`: the memory benchmark's whole code path at width 64, in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"


@pytest.mark.slow
def test_memory_benchmark_measures_every_configuration_and_prints_its_result_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--quick", "--repeats", "2", "--out", str(tmp_path / "m.json")],
                          check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("result: lean_vs_naive_peak=") and "est_8b_lora_peak_gib=" in last
    rows = json.loads((tmp_path / "m.json").read_text())
    assert sorted((r["setting"], r["layers"], r["scoring"]) for r in rows) == [
        ("diffu_grpo", 1, "lean"), ("diffu_grpo", 2, "lean"), ("dmpo", 1, "lean"), ("dmpo", 1, "naive"), ("dmpo", 2, "lean")]
    assert [r["repeats"] for r in rows] == [1, 2, 2, 2, 2]  # the timed processes repeat, the naive one does not
    for r in rows:
        assert r["peak_gib"] >= r["steady_gib"] > 0 and r["step_seconds"] > 0
        # a rollout batch: the scoring of each view set the objective needs + mu optimizer steps
        assert r["rollout_batch_seconds"] == pytest.approx(r["score_sets"] * r["score_seconds"] + r["mu"] * r["step_seconds"])
    assert {r["setting"]: (r["mu"], r["score_sets"]) for r in rows} == {
        "dmpo": (4, 1), "diffu_grpo": (12, 12)}
