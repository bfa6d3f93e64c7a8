"""Family mode of ``distribution_matching.py``: DMPO configurations against the supervised floor on
K generated problems (``exact_problems.make_family``) plus the benchmark's own problem."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from exact_problems import FLOOR, OWN_PROBLEM, make_family, run_all

ELBO = {"name": "elbo", "num_samples": 8}
# name -> (objective section without alpha, estimator section); the first one is the headline
FAMILY_METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dmpo": ({"name": "dmpo"}, ELBO),  # DMPOConfig() defaults: log_ratio auto = exact path weights with `ancestral`
    "dmpo_elbo": ({"name": "dmpo", "log_ratio": "estimator"}, ELBO),  # defaults with ELBO weights (block/fast runs)
    "no_replay": ({"name": "dmpo", "replay": 1}, ELBO),  # the defaults before replay (the earlier `dmpo_path`)
    "loss_r2": ({"name": "dmpo", "loss_replicates": 2}, ELBO),  # R = 2: half the loss views (docs/dmpo.md: worse)
    "published": ({"name": "dmpo", "preset": "published"}, {"name": "elbo", "num_samples": 4, "mask_scheme": "antithetic"}),
    "path_none": ({"name": "dmpo", "preset": "published", "log_ratio": "path", "baseline": "none"}, ELBO),
    "path_mean": ({"name": "dmpo", "preset": "published", "log_ratio": "path", "baseline": "mean"}, ELBO),
}
QUICK_STEPS = 300


def run_family(args: argparse.Namespace) -> None:
    problems = [OWN_PROBLEM, *make_family(args.family, args.family_seed)]
    methods = args.methods or (["dmpo"] if args.quick else list(FAMILY_METHODS))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    steps = min(args.steps, QUICK_STEPS) if args.quick else args.steps
    every = max(1, steps // 10)
    jobs = [(p, FLOOR, {}, ELBO, s, steps, every) for p in problems for s in seeds]
    jobs += [(p, m, *FAMILY_METHODS[m], s, steps, every) for m in methods for p in problems for s in seeds]
    runs = run_all(jobs, args.processes)
    rows = family_rows(runs)
    text = family_table(rows, methods)
    print(text)
    out = args.out.with_name(f"dmpo_family{'_quick' if args.quick else ''}")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=1))
    plot_family(rows, methods, out.with_suffix(".png"))
    head = summary(rows, methods[0])
    print(
        f"result: family_median_ratio_to_floor={head['median']:.2f} family_worst_ratio_to_floor={head['worst']:.2f} "
        f"collapses={head['collapses']} own_problem_kl_ratio={head['own']:.3f}"
    )


def family_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (problem, method, seed): the run's exact figures and its ratio to the floor."""
    floors = {(r["problem"], r["seed"]): r for r in runs if r["method"] == FLOOR}
    rows = []
    for r in runs:
        floor = floors[(r["problem"], r["seed"])]
        rows.append({
            "problem": r["problem"], "method": r["method"], "seed": r["seed"], "alpha": r["problem_spec"]["alpha"],
            "kl_ref": r["kl_ref"], "kl_ratio": r["kl_ratio"], "floor_kl_ratio": floor["kl_ratio"],
            "ratio_to_floor": r["final"]["kl"] / floor["final"]["kl"], "reward": r["final"]["reward"],
            "reward_target": r["reward_target"], "entropy": r["final"]["entropy"], "entropy_target": r["entropy_target"],
            "entropy_ref": r["entropy_ref"], "ess": r["ess"], "collapsed": r["collapsed"],
            "frac_groups_identical": r["frac_groups_identical"], "cpu_seconds": r["cpu_seconds"],
        })
    return rows


def summary(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Over the generated problems (not the own one) and seeds: median and worst ratio to the floor,
    collapses; and the own problem's KL ratio (mean over seeds)."""
    family = [r for r in rows if r["method"] == method and r["problem"] != OWN_PROBLEM.name]
    own = [r["kl_ratio"] for r in rows if r["method"] == method and r["problem"] == OWN_PROBLEM.name]
    ratios = [r["ratio_to_floor"] for r in family]
    return {
        "median": statistics.median(ratios), "worst": max(ratios), "collapses": sum(r["collapsed"] for r in family),
        "own": statistics.mean(own) if own else float("nan"),
    }


def family_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Markdown: per problem the floor and, per method, ratio to the floor (mean over seeds, worst)."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    head = "| problem | α | KL(p*‖p_ref) | H(p_ref) → H(p*) | floor KL ratio | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (5 + len(methods))]
    for p in problems:
        mine = [r for r in rows if r["problem"] == p]
        f = [r for r in mine if r["method"] == FLOOR]
        cells = []
        for m in methods:
            rs = [r for r in mine if r["method"] == m]
            mean = statistics.mean(r["ratio_to_floor"] for r in rs)
            worst = max(r["ratio_to_floor"] for r in rs)
            cells.append(f"{mean:.2f} (≤{worst:.2f}){' C' * any(r['collapsed'] for r in rs)}")
        r0 = mine[0]
        lines.append(
            f"| {p} | {r0['alpha']} | {r0['kl_ref']:.2f} | {r0['entropy_ref']:.2f} → {r0['entropy_target']:.2f} | "
            f"{statistics.mean(r['kl_ratio'] for r in f):.3f} | " + " | ".join(cells) + " |"
        )
    for m in methods:
        s = summary(rows, m)
        lines.append(f"\n{m}: median ratio to floor {s['median']:.2f}, worst {s['worst']:.2f}, collapses {s['collapses']}, "
                     f"own problem KL ratio {s['own']:.3f}")
    return "\n".join(lines)


def plot_family(rows: list[dict[str, Any]], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(problems) * 0.9), 4.5))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        for i, p in enumerate(problems):
            vals = [r["ratio_to_floor"] for r in rows if r["problem"] == p and r["method"] == m]
            x = i + (j - (len(methods) - 1) / 2) * width
            ax.bar(x, statistics.mean(vals), width, color=f"C{j}", label=m if i == 0 else None)
            ax.plot([x] * len(vals), vals, "k.", markersize=3)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(problems)), problems, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("KL(p*‖p_θ) / floor's (log)")
    ax.set_title("DMPO vs the supervised floor on generated problems (dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
