"""Objective comparison on the tiny models (issue: tasks, demo, evaluation; item 7).

DMPO vs diffu-GRPO vs coupled-GRPO, plus wd1, SPG and TraceRL when their plugin packages are installed
(and any other objective a plugin registers, with ``--objectives``),
each trained from the same shipped tiny base (``builtin:countdown``, ``builtin:sudoku``) with the
same sampler, batch, steps, seeds — hence the same number of rollouts — and evaluated greedily on the
same 256 held-out puzzles every ``--every`` steps.

    python benchmarks/objectives_tiny.py              # both tasks, 3 seeds
    python benchmarks/objectives_tiny.py --quick      # countdown, 1 seed, fewer steps

Prints the leaderboard (rows = objective, columns = task), the held-out accuracy curve and how
many rollouts DMPO needed to reach the best baseline's final accuracy. The last line is
machine-readable: ``result: countdown_dmpo=0.59 countdown_diffu_grpo=… sudoku_dmpo=…``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from ddrl.config import build_config
from ddrl.evaluation.leaderboard import build_leaderboard
from ddrl.registry import Registry
from ddrl.training.logger import read_metrics
from ddrl.training.trainer import Trainer

TASKS: dict[str, dict[str, Any]] = {
    "countdown": {
        "model": {"name": "tiny", "path": "builtin:countdown"},
        "task": {"name": "countdown", "variant": "toy", "operators": "+-"},
        "length": 8,
    },
    "sudoku": {
        "model": {"name": "tiny", "path": "builtin:sudoku"},
        "task": {"name": "sudoku", "variant": "toy", "min_empty": 10, "max_empty": 12},
        "length": 16,
    },
}
OBJECTIVES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dmpo": ({"name": "dmpo", "alpha": 0.04}, {"name": "elbo", "num_samples": 4, "mask_scheme": "antithetic"}),  # defaults
    "dmpo_no_replay": ({"name": "dmpo", "alpha": 0.04, "replay": 1}, {"name": "elbo", "num_samples": 4, "mask_scheme": "antithetic"}),
    "dmpo_no_defensive": ({"name": "dmpo", "alpha": 0.04, "defensive": 0.0}, {"name": "elbo", "num_samples": 4, "mask_scheme": "antithetic"}),
    "dmpo_negative": ({"name": "dmpo", "alpha": 0.04, "preset": "published"}, {"name": "elbo", "num_samples": 4, "mask_scheme": "antithetic"}),
    "diffu_grpo": ({"name": "diffu_grpo"}, {"name": "one_step"}),
    "coupled_grpo": ({"name": "coupled_grpo"}, {"name": "coupled"}),
}
BASELINES = ("diffu_grpo", "coupled_grpo")
# Plugin objectives (plugins/ddrl-*), in the default list when installed, each with the estimator it was
# published with. TraceRL merges half a block's steps: 2 canvases per block, as s = 8 gives for the 16
# steps of a published LLaDA block.
PLUGINS: dict[str, dict[str, Any]] = {"wd1": {"name": "wd1"}, "spg": {"name": "spg"}, "tracerl": {"name": "tracerl"}}


def installed_plugins() -> list[str]:
    registered = set(Registry().names("objectives"))
    return [name for name in PLUGINS if name in registered]


def recipe(task: str, objective: str, seed: int, steps: int, every: int, out: Path) -> dict[str, Any]:
    spec = TASKS[task]
    obj, est = OBJECTIVES[objective] if objective in OBJECTIVES else (PLUGINS.get(objective, {"name": objective}), None)
    if obj["name"] == "tracerl":
        obj = {**obj, "shrinkage": spec["length"] // 2}
    raw = {
        "model": spec["model"],
        "task": spec["task"],
        "sampler": {"name": "block", "max_completion_length": spec["length"], "block_length": spec["length"],
                    "steps": spec["length"], "temperature": 1.0},
        "objective": obj,
        "train": {"output_dir": str(out), "seed": seed, "max_steps": steps, "learning_rate": 2e-4,
                  "per_device_train_batch_size": 64, "num_generations": 8, "num_iterations": 2,
                  "save_steps": 10_000, "max_grad_norm": 0.2},
        "eval": {"during_training": True, "eval_steps": every, "lengths": [spec["length"]], "num_examples": 256},
        "logging": {"report_to": ["jsonl"], "progress": False},
    }
    if est is not None:
        raw["estimator"] = est
    else:  # a plugin objective: the estimator it was published with
        preferred = getattr(Registry().get("objectives", objective), "preferred_estimator", None)
        raw["estimator"] = {"name": preferred or "elbo"}
    return raw


def run(task: str, objective: str, seed: int, steps: int, every: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(build_config(recipe(task, objective, seed, steps, every, Path(tmp) / "run"))).train()
        curve = [(m["step"], m["eval_accuracy"]) for m in read_metrics(Path(tmp) / "run") if "eval_accuracy" in m]
    rows_per_step = 64 // 2  # completions per optimizer step: 64 per rollout batch, reused for 2 steps
    return {
        "task": task, "objective": objective, "seed": seed, "before": result.heldout_before,
        "after": result.heldout_after, "seconds": result.seconds,
        "curve": [{"step": s, "completions": s * rows_per_step, "accuracy": a} for s, a in curve],
    }


def rollouts_to_reach(runs: list[dict[str, Any]], level: float) -> int | None:
    """Completions after which the seed-averaged curve first reaches ``level`` (None: never)."""
    steps = [p["step"] for p in runs[0]["curve"]]
    for i, step in enumerate(steps):
        if statistics.mean(r["curve"][i]["accuracy"] for r in runs) >= level - 1e-9:
            return runs[0]["curve"][i]["completions"]
    return None


def plot_curves(runs: list[dict[str, Any]], path: Path) -> None:
    """Seed-averaged held-out accuracy against completions, one line per (task, objective)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for objective in dict.fromkeys(r["objective"] for r in runs if r["task"] == task):
            group = [r for r in runs if r["task"] == task and r["objective"] == objective]
            xs = [p["completions"] for p in group[0]["curve"]]
            ys = [100 * statistics.mean(r["curve"][i]["accuracy"] for r in group) for i in range(len(xs))]
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{objective} ({len(group)} seeds)")
        ax.set(title=f"tiny {task}", xlabel="completions used", ylabel="held-out greedy accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--objectives", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/objectives_tiny.json"))
    parser.add_argument("--plot", nargs="+", type=Path, default=None,
                        help="only draw the curves of earlier runs' JSON files into --out's .png")
    args = parser.parse_args()
    if args.plot:
        plot_curves([r for f in args.plot for r in json.loads(f.read_text())], args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.png')}")
        return
    tasks = args.tasks or (["countdown"] if args.quick else list(TASKS))
    objectives = args.objectives or ["dmpo", "diffu_grpo", "coupled_grpo", *installed_plugins()]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    steps = args.steps or (200 if args.quick else 400)
    runs = []
    for task in tasks:
        for objective in objectives:
            for seed in seeds:
                runs.append(run(task, objective, seed, steps, args.every))
                r = runs[-1]
                print(f"{task} {objective} seed {seed}: {r['before']:.3f} -> {r['after']:.3f} ({r['seconds']:.0f} s)", flush=True)
    records = [
        {"label": f"tiny[{r['task']}]", "model": "tiny", "objective": r["objective"], "task": r["task"],
         "task_variant": "toy", "length": TASKS[r["task"]]["length"], "steps": TASKS[r["task"]]["length"],
         "seed": r["seed"], "accuracy": r["after"]}
        for r in runs
    ] + [
        {"label": f"tiny[{r['task']}]", "model": "tiny", "objective": None, "task": r["task"], "task_variant": "toy",
         "length": TASKS[r["task"]]["length"], "steps": TASKS[r["task"]]["length"], "seed": r["seed"], "accuracy": r["before"]}
        for r in runs if r["objective"] == objectives[0]
    ]
    board = build_leaderboard(records)
    print(f"\nheld-out greedy accuracy (%) after {steps} steps = {steps * 32} completions, mean ± std over seeds {seeds}\n")
    print(board.markdown())
    summary = []
    for task in tasks:
        base_final = {o: statistics.mean(r["after"] for r in runs if r["task"] == task and r["objective"] == o)
                      for o in objectives}
        baselines = [o for o in objectives if o in BASELINES]
        if "dmpo" in objectives and baselines:
            best = max(baselines, key=lambda o: base_final[o])
            need = rollouts_to_reach([r for r in runs if r["task"] == task and r["objective"] == "dmpo"], base_final[best])
            print(f"{task}: best baseline {best} ends at {base_final[best]:.3f}; DMPO reaches it after "
                  f"{need if need is not None else 'more than ' + str(steps * 32)} completions (of {steps * 32})")
        summary += [f"{task}_{o}={base_final[o]:.3f}" for o in objectives]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stem = args.out.with_name(args.out.stem + ("_quick" if args.quick else ""))
    stem.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    plot_curves(runs, stem.with_suffix(".png"))
    print("result: " + " ".join(summary))


if __name__ == "__main__":
    main()
