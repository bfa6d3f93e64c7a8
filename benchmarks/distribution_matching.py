"""Exact distribution-matching benchmark (issue: objectives and trainer, item 7).

On an enumerable problem — the `pattern` task: V = 4 tokens, completions of L = 4 (256 per
prompt), 2 prompts — the reference policy p_ref is a token-only `tiny` model, the reward is the
fraction of positions that match a target pattern, and the tilted target
p*(o|q) ∝ p_ref(o|q) exp(r(q,o)/alpha) is computed exactly. Every objective trains the same
initial policy through the same trainer with the same rollout budget and seeds; we track, exactly,

    KL(p* || p_theta)   (the quantity DMPO minimises),  H(p_theta),  E_{p_theta}[r].

Run:   python benchmarks/distribution_matching.py            # all variants, 3 seeds (~10 min)
       python benchmarks/distribution_matching.py --quick    # headline: dmpo vs the GRPOs, 1 seed
The last line is machine-readable: ``result: dmpo_kl_ratio=… diffu_grpo_kl_ratio=… …`` where
ratio = final KL(p*||p_theta) / KL(p*||p_ref).

Family mode (DMPO on problems nobody tuned it for, ``exact_problems.py``):
       python benchmarks/distribution_matching.py --family 12            # 12 problems x 3 seeds
       python benchmarks/distribution_matching.py --family 12 --quick    # 300 steps, 1 seed (< 5 min)
       python benchmarks/distribution_matching.py --family 12 --family-seed 7   # other problems
Every problem also trains the supervised floor (exact draws of p*, uniform weights, same loss and
budget); the last line: ``result: family_median_ratio_to_floor=… family_worst_ratio_to_floor=…
collapses=… own_problem_kl_ratio=…`` for the first method (DMPOConfig() defaults).

Block-diffusion mode (the same problem with a block-diffusion `tiny`, ``architecture.block_size = B``;
p_theta, p* and the KLs are those of block-by-block decoding, ``enumeration.block_sequence_log_probs``;
the `ancestral` sampler runs with ``block_length = B``):
       python benchmarks/distribution_matching.py --block-size 2 --steps 300 --seeds 0
trains the supervised floor, ``dmpo`` (DMPOConfig() defaults: exact path weights) and ``dmpo_block_elbo``
(defaults with `block_elbo` weights); the last line: ``result: block_size=2 floor_kl_ratio=…
dmpo_kl_ratio=… dmpo_ratio_to_floor=… dmpo_block_elbo_kl_ratio=… dmpo_block_elbo_ratio_to_floor=…``
(means over the seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ddrl.config import build_config
from ddrl.enumeration import all_sequences, entropy, expectation, kl_divergence, sequence_log_probs, tilted_log_target
from ddrl.registry import Registry
from ddrl.training.trainer import Trainer

ALPHA = 0.25
NUM_TOKENS, LENGTH, NUM_PROMPTS, G = 4, 4, 2, 32

# name -> (objective section, estimator section); the sampler is `ancestral` at temperature 1 for all
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dmpo": ({"name": "dmpo", "alpha": ALPHA, "log_ratio": "path", "baseline": "mean"}, {"name": "elbo"}),
    "dmpo_exact_nobaseline": ({"name": "dmpo", "alpha": ALPHA, "log_ratio": "path", "baseline": "none"}, {"name": "elbo"}),
    "dmpo_exact_negative": ({"name": "dmpo", "alpha": ALPHA, "log_ratio": "path", "baseline": "negative"}, {"name": "elbo"}),
    "dmpo_elbo": ({"name": "dmpo", "alpha": ALPHA, "baseline": "mean"}, {"name": "elbo", "num_samples": 8}),
    "dmpo_elbo_nobaseline": ({"name": "dmpo", "alpha": ALPHA, "baseline": "none"}, {"name": "elbo", "num_samples": 8}),
    "dmpo_elbo_published": (
        {"name": "dmpo", "alpha": ALPHA, "baseline": "negative"},
        {"name": "elbo", "num_samples": 4, "mask_scheme": "antithetic"},
    ),
    "diffu_grpo": ({"name": "diffu_grpo"}, {"name": "one_step"}),
    "coupled_grpo": ({"name": "coupled_grpo"}, {"name": "coupled"}),
}
QUICK = ["dmpo", "diffu_grpo", "coupled_grpo"]
# Plugin objectives (plugins/ddrl-*), in both default lists when installed. SPG's blocks span the whole
# completion (the ancestral sampler fills it as one block); TraceRL merges 2 of the 4 sampler steps
# (2 canvases per block, as s = 8 gives for the 16 steps of a published LLaDA block).
PLUGIN_METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "wd1": ({"name": "wd1"}, {"name": "one_step"}),
    "spg": ({"name": "spg"}, {"name": "blockwise", "num_samples": 2, "block_length": LENGTH}),
    "tracerl": ({"name": "tracerl", "shrinkage": 2}, {"name": "elbo"}),  # TraceRL uses no estimator
}


def installed_plugin_methods(registry: Registry) -> list[str]:
    registered = set(registry.names("objectives"))
    return [name for name, (objective, _) in PLUGIN_METHODS.items() if objective["name"] in registered]


def recipe(objective: dict, estimator: dict, seed: int, steps: int, out: Path) -> dict[str, Any]:
    return {
        "model": {
            "name": "tiny", "charset": None, "seed": 1,
            "architecture": {"vocab_size": NUM_TOKENS + 1, "d_model": 32, "n_layers": 2, "n_heads": 2,
                             "ffn_hidden": 64, "init_std": 0.1},
        },
        "task": {"name": "pattern", "num_tokens": NUM_TOKENS, "length": LENGTH, "num_prompts": NUM_PROMPTS},
        "sampler": {"name": "ancestral", "max_completion_length": LENGTH, "temperature": 1.0},
        "estimator": estimator,
        "objective": objective,
        "train": {
            "output_dir": str(out), "seed": seed, "max_steps": steps, "learning_rate": 3e-3,
            "lr_scheduler_type": "cosine", "warmup_steps": 50, "max_grad_norm": 1.0,
            "per_device_train_batch_size": G * NUM_PROMPTS, "num_generations": G, "num_iterations": 4,
            "save_steps": 100000,
        },
        "logging": {"report_to": ["jsonl"], "progress": False},
    }


class ExactTracker:
    """Trainer callback: exact KL(p*||p_theta), entropy and expected reward every ``every`` steps."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.completions = all_sequences(NUM_TOKENS, LENGTH)
        self.targets: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.kl_ref = 0.0
        self.target_entropy = 0.0
        self.target_reward = 0.0
        self.curve: list[dict[str, float]] = []

    def _setup(self, trainer: Trainer) -> None:
        for ex in trainer.examples:
            log_ref = sequence_log_probs(trainer.ref or trainer.policy, ex.columns["prompt_ids"], self.completions)
            reward = (self.completions == torch.tensor(ex.answer)).double().mean(-1)
            log_target = tilted_log_target(log_ref, reward, ALPHA)
            self.targets.append((log_target, reward))
            n = len(trainer.examples)
            self.kl_ref += kl_divergence(log_target, log_ref) / n
            self.target_entropy += entropy(log_target) / n
            self.target_reward += expectation(log_target, reward) / n
        self.curve.append(self._measure(trainer, 0, use_ref=True))

    def _measure(self, trainer: Trainer, step: int, use_ref: bool = False) -> dict[str, float]:
        policy = trainer.ref if use_ref and trainer.ref is not None else trainer.policy
        kl = ent = rew = 0.0
        for ex, (log_target, reward) in zip(trainer.examples, self.targets):
            lp = sequence_log_probs(policy, ex.columns["prompt_ids"], self.completions)
            n = len(self.targets)
            kl, ent, rew = kl + kl_divergence(log_target, lp) / n, ent + entropy(lp) / n, rew + expectation(lp, reward) / n
        completions = step * trainer.plan.num_prompts * G // trainer.cfg.train.num_iterations
        return {"step": step, "completions": completions, "kl": kl, "entropy": ent, "reward": rew}

    def __call__(self, trainer: Trainer, step: int) -> dict[str, float] | None:
        if not self.targets:
            self._setup(trainer)
        if step % self.every and step != trainer.cfg.train.max_steps:
            return None
        point = self._measure(trainer, step)
        self.curve.append(point)
        return {"exact_kl": point["kl"], "exact_entropy": point["entropy"]}


def run_method(name: str, seed: int, steps: int, every: int, registry: Registry) -> dict[str, Any]:
    objective, estimator = {**METHODS, **PLUGIN_METHODS}[name]
    tracker = ExactTracker(every)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(recipe(objective, estimator, seed, steps, Path(tmp) / "run"))
        start = time.perf_counter()
        trainer = Trainer(cfg, registry, callbacks=[tracker])
        tracker._setup(trainer)  # p_ref from the initial weights, also for objectives without a reference
        trainer.train()
        seconds = time.perf_counter() - start
    final = tracker.curve[-1]
    return {
        "method": name, "seed": seed, "seconds": seconds, "kl_ref": tracker.kl_ref,
        "kl_ratio": final["kl"] / tracker.kl_ref, "final": final, "curve": tracker.curve,
        "entropy_ref": tracker.curve[0]["entropy"], "reward_ref": tracker.curve[0]["reward"],
        "entropy_target": tracker.target_entropy, "reward_target": tracker.target_reward,
    }


def summarise(results: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        ratio = [r["kl_ratio"] for r in rs]
        rows.append({
            "method": m,
            "kl_ratio": statistics.mean(ratio),
            "kl_ratio_std": statistics.stdev(ratio) if len(ratio) > 1 else 0.0,
            "kl": statistics.mean(r["final"]["kl"] for r in rs),
            "entropy": statistics.mean(r["final"]["entropy"] for r in rs),
            "reward": statistics.mean(r["final"]["reward"] for r in rs),
            "seconds": statistics.mean(r["seconds"] for r in rs),
        })
    return rows


def print_table(rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    r0 = results[0]
    head = (
        f"KL(p*||p_ref) = {statistics.mean(r['kl_ref'] for r in results):.4f}   "
        f"H(p_ref) = {r0['entropy_ref']:.3f}   E_ref[r] = {r0['reward_ref']:.3f}   "
        f"H(p*) = {r0['entropy_target']:.3f}   E_p*[r] = {r0['reward_target']:.3f}   (log 256 = 5.545)\n\n"
    )
    lines = ["| objective | KL(p*‖p_θ) / KL(p*‖p_ref) | KL(p*‖p_θ) | H(p_θ) | E[r] | seconds/run |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['kl_ratio']:.3f} ± {r['kl_ratio_std']:.3f} | {r['kl']:.4f} | "
            f"{r['entropy']:.3f} | {r['reward']:.3f} | {r['seconds']:.0f} |"
        )
    text = head + "\n".join(lines)
    print(text)
    return text


def plot(results: list[dict[str, Any]], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        xs = [p["completions"] for p in rs[0]["curve"]]
        for ax, key in zip(axes, ("kl", "entropy", "reward")):
            ys = [statistics.mean(r["curve"][i][key] for r in rs) for i in range(len(xs))]
            ax.plot(xs, ys, label=m, marker="." if len(xs) < 30 else None)
    axes[0].set_yscale("log")
    axes[1].axhline(results[0]["entropy_target"], color="black", linestyle="--", linewidth=1, label="H(p*)")
    axes[2].axhline(results[0]["reward_target"], color="black", linestyle="--", linewidth=1, label="E_p*[r]")
    axes[1].legend(fontsize=8)
    for ax, title in zip(axes, ("KL(p* || p_theta) (exact)", "entropy H(p_theta)", "expected reward")):
        ax.set_title(title)
        ax.set_xlabel("completions generated")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def block_methods(block_size: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Block-diffusion mode: name -> (objective section without alpha, estimator section)."""
    block_elbo = {"name": "block_elbo", "num_samples": 8, "block_size": block_size}
    return {
        "dmpo": ({"name": "dmpo"}, block_elbo),  # defaults: log_ratio auto = exact path weights with `ancestral`
        "dmpo_block_elbo": ({"name": "dmpo", "log_ratio": "estimator"}, block_elbo),
    }


def run_block(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The own problem with a block-diffusion model: the floor and DMPO, exactly tracked; prints and
    returns the runs (``exact_problems.run``), the last line machine-readable."""
    from exact_problems import FLOOR, OWN_PROBLEM, block_problem, run, run_all

    problem = block_problem(OWN_PROBLEM, args.block_size)
    methods = block_methods(args.block_size)
    names = [m for m in (args.methods or list(methods)) if m != FLOOR]
    seeds = args.seeds or [0]
    every = max(1, min(args.every, args.steps // 10 or 1))
    block_elbo = methods["dmpo"][1]
    jobs = [(problem, FLOOR, {}, block_elbo, s, args.steps, every) for s in seeds]
    jobs += [(problem, m, *methods[m], s, args.steps, every) for m in names for s in seeds]
    if args.processes > 1 and len(jobs) > 1:
        runs = run_all(jobs, args.processes)
    else:
        runs = []
        for job in jobs:
            r = run(*job)
            print(f"{r['problem']} {r['method']} seed {r['seed']}: KL ratio {r['kl_ratio']:.3f} "
                  f"H {r['final']['entropy']:.2f}/{r['entropy_target']:.2f} ({r['cpu_seconds']:.0f} cpu-s)", flush=True)
            runs.append(r)
    r0 = runs[0]
    print(f"{problem.name}: KL(p*||p_ref) = {r0['kl_ref']:.4f}   H(p_ref) = {r0['entropy_ref']:.3f}   "
          f"H(p*) = {r0['entropy_target']:.3f}   E_p*[r] = {r0['reward_target']:.3f}")
    floors = {r["seed"]: r for r in runs if r["method"] == FLOOR}
    fields = [f"block_size={args.block_size}",
              f"floor_kl_ratio={statistics.mean(r['kl_ratio'] for r in floors.values()):.3f}"]
    for m in names:
        rs = [r for r in runs if r["method"] == m]
        to_floor = statistics.mean(r["final"]["kl"] / floors[r["seed"]]["final"]["kl"] for r in rs)
        fields += [f"{m}_kl_ratio={statistics.mean(r['kl_ratio'] for r in rs):.3f}", f"{m}_ratio_to_floor={to_floor:.2f}"]
    print("result: " + " ".join(fields), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="headline methods, one seed")
    parser.add_argument("--family", type=int, default=None, metavar="K", help="K generated problems (family mode)")
    parser.add_argument("--family-seed", type=int, default=0, help="which family of problems")
    parser.add_argument("--processes", type=int, default=2, help="family mode: runs in parallel, one thread each")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/distribution_matching"))
    parser.add_argument("--replot", action="store_true", help="redraw the figure from the saved JSON")
    parser.add_argument("--block-size", type=int, default=None, metavar="B",
                        help="block-diffusion mode: the own problem with a block-diffusion tiny of block size B")
    args = parser.parse_args()
    if args.block_size is not None:
        run_block(args)
        return
    if args.family is not None:
        from family import run_family

        run_family(args)
        return
    suffix = "_quick" if args.quick else ""
    if args.replot:
        saved = json.loads(args.out.with_name(args.out.name + suffix + ".json").read_text())
        plot(saved["runs"], [r["method"] for r in saved["rows"]], args.out.with_name(args.out.name + suffix + ".png"))
        return
    registry = Registry()
    methods = args.methods or [*(QUICK if args.quick else METHODS), *installed_plugin_methods(registry)]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    results = []
    for m in methods:
        for s in seeds:
            results.append(run_method(m, s, args.steps, args.every, registry))
            print(f"{m} seed {s}: KL ratio {results[-1]['kl_ratio']:.3f} ({results[-1]['seconds']:.0f} s)", flush=True)
    rows = summarise(results, methods)
    print_table(rows, results)
    plot(results, methods, args.out.with_name(args.out.name + suffix + ".png"))
    args.out.with_name(args.out.name + suffix + ".json").write_text(json.dumps({"rows": rows, "runs": results}, indent=1))
    print("result: " + " ".join(f"{r['method']}_kl_ratio={r['kl_ratio']:.3f}" for r in rows))


if __name__ == "__main__":
    main()
