"""Energy benchmark: sample 4x4 Ising lattices with a masked diffusion policy (MDNS, arXiv 2508.10684;
docs/objectives.md).

Two targets p*(x) ∝ exp(-beta H(x)) on the 4 x 4 periodic lattice (2^16 states, so p* and log Z are
exact): MDNS's published setting J = 1, h = 0.1, beta = 0.28 (WDCE: ESS 0.964, KL 0.038, log Z error
3e-4) and the critical beta = 0.4407 with h = 0 (two symmetric ordered modes). Each objective
trains the same freshly initialised token-only `tiny` policy through the same trainer with the same
sampler (`ancestral`: one site per step in a uniformly random order, exact path likelihoods), batch,
steps, learning rate and seed — so the same number of rollout samples:

- dmpo: WDCE with exact path weights, uniform reference, alpha = 1 (MDNS's loss; batch reused;
  ``--quick`` adds DMPO's adaptive c at a target ESS of 0.3, see ``--target-ess``);
- log_variance, rerf: MDNS's comparison losses (``ddrl.objectives.log_variance`` / ``rerf``);
- diffu_grpo: d1's reward maximisation — not a sampler of p*, a contrast.

The policy is `tiny` (d_model 64, 2 layers) with learned absolute position embeddings on top of
its rotary phases (``--positions rotary`` drops them: rotary phases only carry offsets, and on a
lattice written row by row the offset does not say whether two sites neighbour).

Then N = ``--eval-samples`` configurations per run give the ESS, |log Zhat - log Z|, kl_path (mean
of log p_theta(x; sigma) - log p*(x): an upper bound on KL(p_theta || p*) whose mean does not
depend on N), the histogram KL(p̂ || p*) and TV (MDNS's direction; these depend strongly on N, so
the same metrics of N exact draws from p* are printed as the floor a perfect sampler would get:
0.84 at N = 2^14, 0.12 at 2^18, 0.033 at 2^20 for the published target) and the mode balance
P(m > 0) + P(m = 0)/2 (1/2 for the symmetric h = 0 target). The full run adds one longer dmpo run
on the published target (``--long-steps``, evaluated on ``--long-eval-samples``): the headline.
``--ceiling STEPS`` also trains the same model by plain denoising on exact draws of p* (with and
without absolute positions): the best this model can do, with no sampler in the loop.

Timing: "train s" is wall-clock and "train CPU s" the process's CPU time, both without the curve
measurements; run with OMP_NUM_THREADS=1 for one-core figures.

Run:   python benchmarks/energy.py            # 4 objectives x 2 targets + long dmpo (~1.5 h on one core)
       python benchmarks/energy.py --quick    # dmpo on both targets, short (< 5 min)
       # the full run on two cores, then one report:
       python benchmarks/energy.py --targets published --out /tmp/pub &
       python benchmarks/energy.py --targets critical --long-steps 0 --ceiling 1500 --out /tmp/crit
       python benchmarks/energy.py --merge /tmp/pub.json /tmp/crit.json
Writes docs/figures/energy[_quick].{png,json} (or --out). The last line is machine-readable:
``result: dmpo_ess=… dmpo_kl=… dmpo_logz_err=… mode_balance=…`` (dmpo on the published target —
the long run when there is one — with kl = KL(p̂ || p*) at that run's N; the mode balance of
dmpo at the critical point).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ddrl.config import build_config
from ddrl.energy.measure import LatticeSample, sample_metrics, sample_policy
from ddrl.energy.spin_lattice import SpinLattice
from ddrl.registry import Registry
from ddrl.training.trainer import Trainer

PUBLISHED = {"ess": 0.964, "kl_hist": 0.038, "log_z_error": 3e-4}  # MDNS, WDCE, 4x4, beta 0.28, h 0.1
TARGETS: dict[str, dict[str, float]] = {
    "published": {"L": 4, "J": 1.0, "h": 0.1, "beta": 0.28},
    "critical": {"L": 4, "J": 1.0, "h": 0.0, "beta": 0.4407},
}
OBJECTIVES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dmpo": ({"name": "dmpo", "alpha": 1.0, "log_ratio": "path", "reference": "uniform", "baseline": "none"},
             {"name": "exact"}),
    "log_variance": ({"name": "log_variance"}, {"name": "exact"}),
    "rerf": ({"name": "rerf"}, {"name": "exact"}),
    "diffu_grpo": ({"name": "diffu_grpo"}, {"name": "one_step"}),
}


def lattice_of(target: str) -> SpinLattice:
    spec = TARGETS[target]
    return SpinLattice("ising", int(spec["L"]), spec["J"], spec["beta"], spec["h"])


def recipe(objective: str, target: str, steps: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    obj, est = OBJECTIVES[objective]
    if objective == "dmpo" and args.target_ess:
        obj = {**obj, "target_ess": args.target_ess}  # DMPO's adaptive c: tempered weights while the ESS is low
    n = int(TARGETS[target]["L"]) ** 2
    return {
        "model": {
            "name": "tiny", "charset": None, "seed": args.seed,
            "architecture": {"vocab_size": 3, "d_model": args.d_model, "n_layers": args.n_layers, "n_heads": 4,
                             "ffn_hidden": 2 * args.d_model, "max_seq_len": n,
                             "absolute_positions": args.positions == "absolute"},
        },
        "task": {"name": "ising", **TARGETS[target]},
        "sampler": {"name": "ancestral", "max_completion_length": n, "temperature": 1.0},
        "estimator": est,
        "objective": obj,
        "train": {
            "output_dir": str(out), "seed": args.seed, "max_steps": steps, "learning_rate": args.lr,
            "lr_scheduler_type": "cosine", "warmup_steps": steps // 20, "max_grad_norm": 1.0,
            "per_device_train_batch_size": args.batch, "num_generations": args.batch,
            "num_iterations": args.reuse, "save_steps": args.reuse * steps,
        },
        "eval": {"during_training": False},  # measured here (Curve), outside the timed training
        "logging": {"report_to": ["jsonl"], "progress": False},
    }


class Curve:
    """Trainer callback: ESS, log Z error and kl_path of ``samples`` fresh configurations every
    ``every`` steps; ``seconds`` leaves out the time spent measuring."""

    def __init__(self, lattice: SpinLattice, every: int, samples: int) -> None:
        self.lattice, self.every, self.samples = lattice, every, samples
        self.points: list[dict[str, float]] = []
        self.restart()

    def restart(self) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.measuring = self.cpu_measuring = 0.0

    def __call__(self, trainer: Trainer, step: int) -> dict[str, float] | None:
        tc = trainer.cfg.train
        if step % self.every and step != tc.max_steps:
            return None
        begin, cpu_begin = time.perf_counter(), time.process_time()
        gen = torch.Generator().manual_seed(step)
        m = sample_metrics(self.lattice, sample_policy(trainer.policy, trainer.sampler, self.samples, generator=gen))
        self.measuring += time.perf_counter() - begin
        self.cpu_measuring += time.process_time() - cpu_begin
        point = {"step": step, "samples": -(-step // tc.num_iterations) * tc.per_device_train_batch_size,
                 "ess": m["ess"], "log_z_error": m["log_z_error"], "kl_path": m["kl_path"],
                 "seconds": self.elapsed(), "cpu_seconds": self.cpu_elapsed()}
        self.points.append(point)
        print(f"  step {step}: ESS {m['ess']:.3f}  kl_path {m['kl_path']:.4f}  ({point['seconds']:.0f} s)", flush=True)
        return {"curve_ess": m["ess"], "curve_kl_path": m["kl_path"]}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.measuring

    def cpu_elapsed(self) -> float:
        """CPU seconds of this process (all its threads) spent training, measurement left out."""
        return time.process_time() - self.cpu_start - self.cpu_measuring


def run(
    objective: str, target: str, steps: int, n_eval: int, args: argparse.Namespace, registry: Registry
) -> dict[str, Any]:
    lattice = lattice_of(target)
    curve = Curve(lattice, args.every, args.curve_samples)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(build_config(recipe(objective, target, steps, args, Path(tmp) / "run")), registry,
                          callbacks=[curve])
        curve.restart()
        trainer.train()
        seconds, cpu_seconds = curve.elapsed(), curve.cpu_elapsed()
        gen = torch.Generator().manual_seed(10_000 + args.seed)
        sample = sample_policy(trainer.policy, trainer.sampler, n_eval, generator=gen)
    return {"objective": objective, "target": target, "steps": steps, "eval_samples": n_eval, "train_seconds": seconds,
            "train_cpu_seconds": cpu_seconds,
            "rollout_samples": -(-steps // args.reuse) * args.batch, "metrics": sample_metrics(lattice, sample),
            "curve": curve.points}


def floor(target: str, num_samples: int) -> dict[str, Any]:
    """The histogram metrics of ``num_samples`` exact draws from p* (no model error), and the exact
    mean energy per site."""
    lattice = lattice_of(target)
    draws = lattice.exact_samples(num_samples, torch.Generator().manual_seed(0))
    metrics: dict[str, Any] = sample_metrics(lattice, LatticeSample(draws, None))
    mean_energy = float((lattice.log_target().exp() * lattice.energy(lattice.states())).sum())
    metrics["exact_energy_per_site"] = mean_energy / lattice.num_sites
    metrics["target"] = target
    return metrics


def table(results: list[dict[str, Any]], floors: list[dict[str, Any]]) -> str:
    lines = [
        "N = evaluation samples of the row; KL(p̂‖p*) is MDNS's direction over the N-sample histogram (a "
        "perfect sampler scores the floor rows); kl_path = mean log p_θ(x;σ) − log p*(x) ≥ KL(p_θ‖p*)",
        "",
        "| target | objective | steps | rollout samples | N | ESS | abs log Z error | kl_path | KL(p̂‖p*) | TV | "
        "mode balance | E/site | train s | train CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"| {r['target']} | {r['objective']} | {r['steps']} | {r['rollout_samples']} | {int(m['num_samples'])} | "
            f"{m['ess']:.3f} | "
            f"{m['log_z_error']:.1e} | {m['kl_path']:.3f} | {m['kl_hist']:.3f} | {m['tv_hist']:.3f} | "
            f"{m['mode_balance']:.3f} | {m['energy_per_site']:.3f} | {r['train_seconds']:.0f} | "
            f"{r['train_cpu_seconds']:.0f} |"
        )
    for m in floors:
        lines.append(
            f"| {m['target']} | exact draws of p* (floor) | - | - | {int(m['num_samples'])} | 1 | 0 | 0 | "
            f"{m['kl_hist']:.3f} | "
            f"{m['tv_hist']:.3f} | {m['mode_balance']:.3f} | {m['exact_energy_per_site']:.3f} (exact) | - | - |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in TARGETS if any(r["target"] == t for r in results)]
    fig, axes = plt.subplots(2, len(targets), figsize=(6 * len(targets), 7), squeeze=False)
    for col, target in enumerate(targets):
        for r in (r for r in results if r["target"] == target):
            label = f"{r['objective']} ({r['steps']} steps)"
            xs = [p["samples"] for p in r["curve"]]
            axes[0][col].plot(xs, [p["ess"] for p in r["curve"]], marker=".", label=label)
            axes[1][col].plot(xs, [max(p["kl_path"], 1e-4) for p in r["curve"]], marker=".", label=label)
        axes[0][col].set_title(f"{target}: ESS")
        axes[1][col].set_title(f"{target}: kl_path (≥ KL(p_θ‖p*))")
        axes[1][col].set_yscale("log")
        if target == "published":
            axes[0][col].axhline(PUBLISHED["ess"], color="black", linestyle="--", linewidth=1, label="MDNS WDCE")
        for ax in axes[:, col]:
            ax.set_xlabel("rollout samples")
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def ceiling(positions: str, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """What the model can learn at best: the same fresh `tiny` trained by plain denoising on exact
    draws of the published target (no sampler, no weights), ``steps`` batches of ``args.batch``.
    Each row reveals k ~ U{0..n-1} random sites; the loss is the mean cross-entropy of the masked
    ones times n, i.e. the per-step loss of a uniformly random unmasking order (cosine lr)."""
    import math

    import torch.nn.functional as F

    from ddrl.models.tiny import TinyConfig, TinyPolicy
    from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig

    lattice = lattice_of("published")
    n, q = lattice.num_sites, lattice.q
    torch.manual_seed(args.seed)
    spec = recipe("dmpo", "published", steps, args, Path("unused"))["model"]
    spec["architecture"]["absolute_positions"] = positions == "absolute"
    policy = TinyPolicy.from_config(TinyConfig(**spec))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * k / steps))
    )
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=n, temperature=1.0))
    gen = torch.Generator().manual_seed(args.seed)
    start = time.process_time()
    for _ in range(steps):
        x = lattice.exact_samples(args.batch, gen)  # (B, n)
        revealed = torch.randint(0, n, (args.batch, 1), generator=gen)
        masked = torch.rand((args.batch, n), generator=gen).argsort(-1) >= revealed  # n - k masked per row
        logits = policy(torch.where(masked, policy.mask_token_id, x))[..., :q]
        ce = F.cross_entropy(logits.reshape(-1, q), x.reshape(-1), reduction="none").view(args.batch, n)
        loss = ((ce * masked).sum(1) / masked.sum(1) * n).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    cpu = time.process_time() - start
    sample = sample_policy(policy, sampler, args.eval_samples, generator=torch.Generator().manual_seed(10_000))
    m = sample_metrics(lattice, sample)
    print(f"ceiling ({positions} positions, {steps} supervised steps on exact draws): ESS {m['ess']:.3f}  "
          f"kl_path {m['kl_path']:.4f}  ({cpu / 60:.1f} CPU min)", flush=True)
    return {"positions": positions, "steps": steps, "train_cpu_seconds": cpu, "metrics": m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="dmpo only, both targets, short runs")
    parser.add_argument("--objectives", nargs="*", default=None, choices=list(OBJECTIVES))
    parser.add_argument("--targets", nargs="*", default=None, choices=list(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every compared run")
    parser.add_argument("--long-steps", type=int, default=None, help="steps of the headline dmpo run (0: none)")
    parser.add_argument("--batch", type=int, default=256, help="rollout batch = one group")
    parser.add_argument("--reuse", type=int, default=4,
                        help="optimizer steps per rollout batch (MDNS: 10; 4 measured better per CPU minute)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--target-ess", type=float, default=None,
                        help="dmpo: adaptive c (objective.target_ess), tempering the weights while their ESS is "
                        "low (default: 0.3 with --quick, where seed 0 otherwise loses a mode at the critical "
                        "point; off in the full run; 0 = off)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--positions", choices=["absolute", "rotary"], default="absolute",
                        help="absolute: learned per-site embeddings on top of rotary phases (rotary alone "
                        "cannot tell which sites neighbour across a row's end)")
    parser.add_argument("--ceiling", type=int, default=0, metavar="STEPS",
                        help="also train the model on exact draws of p* for STEPS steps, with absolute and "
                        "with rotary positions: the best the model can do")
    parser.add_argument("--every", type=int, default=None)
    parser.add_argument("--curve-samples", type=int, default=None)
    parser.add_argument("--eval-samples", type=int, default=None, help="N of every compared run")
    parser.add_argument("--long-eval-samples", type=int, default=2**18, help="N of the headline run")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/energy"))
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="write one report (at --out) from the JSON files of earlier runs, and stop")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    args.steps = args.steps or (120 if args.quick else 400)
    if args.target_ess is None and args.quick:
        args.target_ess = 0.3
    args.long_steps = (0 if args.quick else 1200) if args.long_steps is None else args.long_steps
    args.every = args.every or (40 if args.quick else 100)
    args.curve_samples = args.curve_samples or (512 if args.quick else 1024)
    args.eval_samples = args.eval_samples or (4096 if args.quick else 2**14)
    objectives = args.objectives or (["dmpo"] if args.quick else list(OBJECTIVES))
    targets = args.targets or list(TARGETS)
    registry = Registry()
    plan = [(o, t, args.steps, args.eval_samples) for t in targets for o in objectives]
    if args.long_steps and "published" in targets:
        plan.append(("dmpo", "published", args.long_steps, args.long_eval_samples))
    results = []
    for objective, target, steps, n_eval in plan:
        print(f"{target} / {objective} / {steps} steps", flush=True)
        r = run(objective, target, steps, n_eval, args, registry)
        r["headline"] = n_eval == args.long_eval_samples and steps == args.long_steps and objective == "dmpo"
        results.append(r)
        m = r["metrics"]
        print(f"  -> ESS {m['ess']:.3f}  log Z err {m['log_z_error']:.1e}  kl_path {m['kl_path']:.3f}  "
              f"KL(p̂||p*) {m['kl_hist']:.3f}  mode balance {m['mode_balance']:.3f}  ({r['train_seconds']:.0f} s, "
              f"{r['train_cpu_seconds'] / 60:.1f} CPU min)",
              flush=True)
    ceilings = [ceiling(p, args.ceiling, args) for p in ("absolute", "rotary")] if args.ceiling else []
    sizes = {(r["target"], r["eval_samples"]) for r in results}
    if ceilings:
        sizes.add(("published", args.eval_samples))
    floors = [floor(t, n) for t, n in sorted(sizes)]
    out = args.out.with_name(args.out.name + ("_quick" if args.quick else ""))
    report(results, floors, ceilings, out, {k: str(v) for k, v in vars(args).items()})


def report(results: list[dict[str, Any]], floors: list[dict[str, Any]], ceilings: list[dict[str, Any]], out: Path,
           run_args: dict[str, Any]) -> None:
    """Table, PNG and JSON at ``out``, then the ``result:`` line."""
    text = table(results, floors)
    for c in ceilings:
        m = c["metrics"]
        text += (f"\nceiling, {c['positions']} positions: {c['steps']} supervised steps on exact draws of p* "
                 f"(published): ESS {m['ess']:.3f}, kl_path {m['kl_path']:.4f}, KL(p̂‖p*) {m['kl_hist']:.3f} "
                 f"({c['train_cpu_seconds'] / 60:.1f} CPU min)")
        print(text.splitlines()[-1], flush=True)
    plot(results, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps(
        {"args": run_args, "published": PUBLISHED, "table": text, "floors": floors, "runs": results, "ceilings": ceilings}, indent=1))
    dmpo = [r for r in results if r["objective"] == "dmpo"]
    head = max((r for r in dmpo if r["target"] == "published"), key=lambda r: (r.get("headline", False), r["steps"]),
               default=None)
    crit = next((r for r in dmpo if r["target"] == "critical"), None)
    if head is not None:
        m = head["metrics"]
        balance = crit["metrics"]["mode_balance"] if crit is not None else float("nan")
        print(f"result: dmpo_ess={m['ess']:.3f} dmpo_kl={m['kl_hist']:.4f} dmpo_logz_err={m['log_z_error']:.2e} "
              f"mode_balance={balance:.3f}")


def merge(paths: list[Path], out: Path) -> None:
    """One report from the JSON files of several runs of this script (e.g. one per target, run on
    separate cores)."""
    parts = [json.loads(p.read_text()) for p in paths]
    results = [r for p in parts for r in p["runs"]]
    floors = list({(f["target"], f["num_samples"]): f for p in parts for f in p["floors"]}.values())
    ceilings = [c for p in parts for c in p.get("ceilings", [])]
    report(results, floors, ceilings, out, {"merged": [str(p) for p in paths]})

if __name__ == "__main__":
    main()
