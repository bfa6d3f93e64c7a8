"""Rewrite the golden trajectories: ``python -m tests.golden.regenerate [CASE ...]`` (all by default).

Only for an intended change of behaviour; the commit that changes the files says which and why.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.golden.cases import CASES, PLUGIN_CASES, run_case, write_golden  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="*", help=f"cases to rewrite (default: all of {', '.join(CASES)})")
    names = parser.parse_args().cases or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    missing = [n for n in names if n in PLUGIN_CASES and importlib.util.find_spec(PLUGIN_CASES[n]) is None]
    if missing:
        parser.error(f"install the plugin packages first (pip install -e plugins/...): {missing} need them")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            record = run_case(name, Path(tmp))
            print(f"{write_golden(record)}: {len(record['metrics'])} steps, weights {record['weights']['sha256'][:12]}")


if __name__ == "__main__":
    main()
