"""Golden trajectories: every objective reproduces its stored short run bit for bit.

The stored runs (``tests/golden/*.json``) were made with ``python -m tests.golden.regenerate``; a
change that is meant to keep behaviour must leave them reproducible. On a machine whose float
rounding differs from the recording one (another torch build or CPU instruction set) bitwise
equality is out of reach, and the runs are compared within a relative 1e-4 instead.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest

from tests.golden.cases import CASES, PLUGIN_CASES, differences, fingerprint, load_golden, run_case


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_objective_reproduces_its_golden_trajectory(tmp_path, name):
    if name in PLUGIN_CASES and importlib.util.find_spec(PLUGIN_CASES[name]) is None:
        pytest.skip(f"plugin package {PLUGIN_CASES[name]} is not installed (pip install -e plugins/...)")
    golden = load_golden(name)
    assert golden["recipe"] == CASES[name], "the case changed: regenerate its golden file on purpose"
    got = run_case(name, tmp_path)
    bitwise = golden["fingerprint"] == fingerprint()
    problems = differences(got, golden, rtol=None if bitwise else 1e-4)
    assert not problems, "\n".join(problems[:20])


def test_a_one_ulp_change_of_any_metric_or_weight_is_caught():
    golden = load_golden("dmpo")
    assert not differences(golden, golden)
    nudged = copy.deepcopy(golden)
    loss = nudged["metrics"][-1]["loss"]
    nudged["metrics"][-1]["loss"] = math.nextafter(loss, math.inf)
    assert differences(nudged, golden) == [f"step 4: loss = {nudged['metrics'][-1]['loss']!r}, golden {loss!r}"]
    nudged = copy.deepcopy(golden)
    nudged["weights"]["sha256"] = "0" * 64
    assert differences(nudged, golden) == ["final weights: sha256 differs"]
    # across machines: within 1e-4, but not beyond
    nudged = copy.deepcopy(golden)
    nudged["metrics"][0]["reward"] *= 1 + 1e-6
    assert not differences(nudged, golden, rtol=1e-4)
    nudged["metrics"][0]["reward"] *= 1 + 1e-3
    assert differences(nudged, golden, rtol=1e-4)
