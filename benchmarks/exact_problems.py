"""Enumerable distribution-matching problems, exact tracking and the supervised floor.

Shared by ``distribution_matching.py``: the benchmark's own problem (`pattern`, near-uniform
reference, alpha 0.25) and a *family* of problems generated from a seed (`synthetic` rewards of
every kind, references from ddrl's tiny init with a range of peakedness, alpha in {0.5, 1, 2}).
On every problem p_theta, p* and KL(p* || p_theta) are exact (2 prompts x V^L = 256 completions).

The **supervised floor** of a problem trains the same model with the same optimizer, budget and
WDCE loss on exact draws of p* with uniform weights: what DMPO could reach with perfect samples.

**Block diffusion** (``Problem.block_size``, ``distribution_matching.py --block-size B``): the tiny
model gets ``architecture.block_size = B`` and its generative distribution is block-by-block
decoding, uniformly random order inside a block; p_theta (and so p_ref, p* and every KL) is then
``enumeration.block_sequence_log_probs``, not the any-order ``sequence_log_probs``, and the
``ancestral`` sampler runs with ``block_length = B``, which draws exactly from it.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.config import build_config
from ddrl.enumeration import (
    all_sequences,
    block_sequence_log_probs,
    entropy,
    expectation,
    kl_divergence,
    sequence_log_probs,
    tilted_log_target,
)
from ddrl.objectives.base import ObjectiveContext, RolloutBatch, Weighed
from ddrl.objectives.dmpo import DMPO, DMPOState
from ddrl.objectives.groups import group_size
from ddrl.registry import Registry
from ddrl.rewards.synthetic import synthetic_values
from ddrl.samplers.ancestral import AncestralSamplerConfig
from ddrl.samplers.base import Sampler, SampleOutput
from ddrl.tasks.synthetic import TERM_KINDS
from ddrl.training.trainer import Trainer

NUM_TOKENS, LENGTH, NUM_PROMPTS, G = 4, 4, 2, 32
ALPHAS = (0.5, 1.0, 2.0)
REWARD_SCALE = 2.0  # reward std under uniform completions: r/alpha has std 1, 2 or 4
KINDS = (*TERM_KINDS, "mixed")
NUM_PROMPT_TOKENS = 2  # the `pattern` task's prompts (ExactTracker checks every prompt of a block problem)
ARCH = {"vocab_size": NUM_TOKENS + 1, "d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_hidden": 64}


@dataclass(frozen=True)
class Problem:
    """One enumerable problem: the task, the reference's initialisation and alpha."""

    name: str
    task: dict[str, Any]
    model_seed: int
    init_std: float
    alpha: float
    entropy_fraction: float = math.nan  # H(p_ref) / log V^L, averaged over the prompts
    block_size: int | None = None  # a block-diffusion tiny (architecture.block_size); None: bidirectional

    def model(self) -> dict[str, Any]:
        arch = {**ARCH, "init_std": self.init_std}
        if self.block_size is not None:
            arch["block_size"] = self.block_size
        return {"name": "tiny", "charset": None, "seed": self.model_seed, "architecture": arch}

    def sampler(self, name: str) -> dict[str, Any]:
        """The sampler section: blocks of ``block_size`` for a block model (its generative law)."""
        section = {"name": name, "max_completion_length": LENGTH, "temperature": 1.0}
        if self.block_size is not None:
            section["block_length"] = self.block_size
        return section


OWN_PROBLEM = Problem("own", {"name": "pattern", "num_tokens": NUM_TOKENS, "length": LENGTH, "num_prompts": NUM_PROMPTS},
                      model_seed=1, init_std=0.1, alpha=0.25)


def exact_log_probs(policy: Any, prompt: list[int], completions: Tensor) -> Tensor:
    """``[N]`` log p_theta(o|q) exactly, under the policy's own generative law: block-by-block decoding
    (``block_sequence_log_probs``) for a block-diffusion model, any order (``sequence_log_probs``) else."""
    block_size = getattr(policy, "block_size", None)
    if block_size is None:
        return sequence_log_probs(policy, prompt, completions)
    return block_sequence_log_probs(policy, prompt, completions, block_size)


def block_problem(problem: Problem, block_size: int) -> Problem:
    """``problem`` with a block-diffusion model of ``block_size``. The ancestral sampler's blocks are
    counted from the first completion token and the model's from the first prompt token, so
    ``block_size`` must divide the prompt length (2 for `pattern`) and L."""
    if LENGTH % block_size or NUM_PROMPT_TOKENS % block_size:
        raise ValueError(f"block_size {block_size} must divide the prompt length ({NUM_PROMPT_TOKENS}) and "
                         f"L ({LENGTH}) so that the sampler's blocks are the model's")
    return replace(problem, name=f"{problem.name}-block{block_size}", block_size=block_size)


def rewards_of(problem_task: dict[str, Any], example: Any, completions: Tensor) -> Tensor:
    """``[N]`` the problem's reward of every completion after ``example``'s prompt."""
    if problem_task["name"] == "pattern":
        return (completions == torch.tensor(example.answer)).double().mean(-1)
    return synthetic_values(example.columns["reward"], completions)


def reference_entropy(problem: Problem, registry: Registry) -> float:
    """H(p_ref) / log V^L of the problem's initial model, averaged over its prompts."""
    cfg = build_config({"model": problem.model(), "task": problem.task}, registry=registry, sections=["model", "task"])
    policy = registry.build("models", cfg.model).eval()
    task = registry.build("tasks", cfg.task)
    completions = all_sequences(NUM_TOKENS, LENGTH)
    values = [entropy(exact_log_probs(policy, ex.columns["prompt_ids"], completions)) for ex in task.split("train")]
    return statistics.mean(values) / (LENGTH * math.log(NUM_TOKENS))


def make_family(size: int, family_seed: int = 0) -> list[Problem]:
    """``size`` problems from ``family_seed``: reward kinds in turn, alpha and a target reference
    entropy (uniform in [0.6, 0.97] of log V^L) drawn per problem; the model seed and init std are
    searched until the reference's entropy is within 0.03 of the target (closest of 40 tries), then
    the reward's seed until KL(p* || p_ref) >= MIN_KL (largest of 10 tries): a problem where
    matching the target matters, not one the start already solves within the floor's noise."""
    rng = random.Random(f"ddrl-dmpo-family-{family_seed}")
    registry = Registry()
    problems = []
    for k in range(size):
        kind = KINDS[k % len(KINDS)]
        alpha = rng.choice(ALPHAS)
        target = rng.uniform(0.6, 0.97)
        task = {"name": "synthetic", "num_tokens": NUM_TOKENS, "length": LENGTH, "num_prompts": NUM_PROMPTS,
                "reward": kind, "reward_scale": REWARD_SCALE, "seed": rng.randrange(10**6)}
        best = None
        for _ in range(40):
            candidate = Problem(f"f{family_seed}-{k}-{kind}", task, rng.randrange(10**6), rng.uniform(0.05, 0.8), alpha)
            h = reference_entropy(candidate, registry)
            if best is None or abs(h - target) < abs(best.entropy_fraction - target):
                best = replace(candidate, entropy_fraction=h)
            if abs(h - target) < 0.03:
                break
        problems.append(_with_enough_tilt(best, rng, registry))  # type: ignore[arg-type]
    return problems


MIN_KL = 0.4  # nats of KL(p* || p_ref) a family problem needs at least


def _with_enough_tilt(problem: Problem, rng: random.Random, registry: Registry) -> Problem:
    best, best_kl = problem, target_kl(problem, registry)
    for _ in range(10):
        if best_kl >= MIN_KL:
            break
        candidate = replace(problem, task={**problem.task, "seed": rng.randrange(10**6)})
        kl = target_kl(candidate, registry)
        if kl > best_kl:
            best, best_kl = candidate, kl
    return best


def target_kl(problem: Problem, registry: Registry) -> float:
    """KL(p* || p_ref) of the problem, averaged over its prompts."""
    cfg = build_config({"model": problem.model(), "task": problem.task}, registry=registry, sections=["model", "task"])
    policy = registry.build("models", cfg.model).eval()
    task = registry.build("tasks", cfg.task)
    completions = all_sequences(NUM_TOKENS, LENGTH)
    kls = []
    for ex in task.split("train"):
        log_ref = exact_log_probs(policy, ex.columns["prompt_ids"], completions)
        kls.append(kl_divergence(tilted_log_target(log_ref, rewards_of(problem.task, ex, completions), problem.alpha), log_ref))
    return statistics.mean(kls)


# ------------------------------------------------------------------------------------------------
# the supervised floor: exact draws of p*, uniform weights, DMPO's own loss


class TargetDraws(Sampler):
    """Draws completions from an enumerated target per prompt (``targets`` set by the benchmark)."""

    Config = AncestralSamplerConfig

    def __init__(self, config: AncestralSamplerConfig) -> None:
        super().__init__(config)
        self.targets: dict[tuple[int, ...], Tensor] = {}  # prompt ids -> log p* over all_sequences

    def sample(self, policy, prompt_ids, prompt_mask=None, *, generator=None, scorers=()):  # noqa: ANN001
        completions = all_sequences(NUM_TOKENS, LENGTH)
        rows = [self.targets[tuple(p.tolist())].exp() for p in prompt_ids]
        draws = torch.stack([torch.multinomial(r.float(), 1, generator=generator)[0] for r in rows])
        batch = SequenceBatch.from_parts(prompt_ids, completions[draws].to(prompt_ids.device), prompt_mask)
        return SampleOutput(batch)


class UniformWDCE(DMPO):
    """DMPO's loss with every weight 1/G: supervised training on the rollouts as they are."""

    @property
    def needs_reference(self) -> bool:
        return False

    @property
    def needs_estimator(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset()

    @property
    def needs_sampler(self) -> frozenset[str]:
        return frozenset()

    @property
    def reference_share(self) -> float:
        return 0.0

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> DMPOState:
        return DMPOState(torch.zeros(len(rollout)))

    def weigh(self, rollout: RolloutBatch, state: DMPOState, ctx: ObjectiveContext) -> Weighed[DMPOState]:
        groups, _ = ctx.groups(rollout)
        return Weighed(replace(state, advantages=groups.mine(1.0 / group_size(groups.ids)).float()), {"ess": 1.0})


def registry_with_floor() -> Registry:
    registry = Registry()
    registry.register("samplers", "target_draws", TargetDraws)
    registry.register("objectives", "uniform_wdce", UniformWDCE)
    return registry


# ------------------------------------------------------------------------------------------------
# exact tracking


class ExactTracker:
    """Trainer callback: exact KL(p*||p_theta), H(p_theta) and E[r] every ``every`` steps."""

    def __init__(self, problem: Problem, every: int) -> None:
        self.problem, self.every = problem, every
        self.completions = all_sequences(NUM_TOKENS, LENGTH)
        self.targets: list[tuple[list[int], Tensor, Tensor]] = []  # (prompt ids, log p*, rewards)
        self.kl_ref = self.target_entropy = self.target_reward = self.ref_entropy = 0.0
        self.curve: list[dict[str, float]] = []

    def setup(self, trainer: Trainer) -> None:
        n = len(trainer.examples)
        block_size = getattr(trainer.policy, "block_size", None)
        for ex in trainer.examples:
            prompt = list(ex.columns["prompt_ids"])
            if block_size is not None and len(prompt) % block_size:
                raise ValueError(f"prompt of {len(prompt)} tokens: the ancestral sampler's blocks of {block_size} "
                                 "would not be the model's (blocks count from the first prompt token)")
            log_ref = exact_log_probs(trainer.policy, prompt, self.completions)  # step 0: p_theta = p_ref
            reward = rewards_of(self.problem.task, ex, self.completions)
            log_target = tilted_log_target(log_ref, reward, self.problem.alpha)
            self.targets.append((prompt, log_target, reward))
            self.kl_ref += kl_divergence(log_target, log_ref) / n
            self.target_entropy += entropy(log_target) / n
            self.target_reward += expectation(log_target, reward) / n
            self.ref_entropy += entropy(log_ref) / n
        self.curve.append(self.measure(trainer, 0))

    def measure(self, trainer: Trainer, step: int) -> dict[str, float]:
        kl = ent = rew = 0.0
        n = len(self.targets)
        for prompt, log_target, reward in self.targets:
            lp = exact_log_probs(trainer.policy, prompt, self.completions)
            kl, ent, rew = kl + kl_divergence(log_target, lp) / n, ent + entropy(lp) / n, rew + expectation(lp, reward) / n
        completions = step * trainer.plan.num_prompts * trainer.plan.num_generations // trainer.cfg.train.num_iterations
        return {"step": step, "completions": completions, "kl": kl, "entropy": ent, "reward": rew}

    def __call__(self, trainer: Trainer, step: int) -> dict[str, float] | None:
        if step % self.every and step != trainer.cfg.train.max_steps:
            return None
        point = self.measure(trainer, step)
        self.curve.append(point)
        return {"exact_kl": point["kl"], "exact_entropy": point["entropy"]}


def recipe(problem: Problem, objective: dict[str, Any], estimator: dict[str, Any], sampler: str, seed: int,
           steps: int, out: Path, group: int = G) -> dict[str, Any]:
    return {
        "model": problem.model(),
        "task": problem.task,
        "sampler": problem.sampler(sampler),
        "estimator": estimator,
        "objective": objective,
        "train": {
            "output_dir": str(out), "seed": seed, "max_steps": steps, "learning_rate": 3e-3,
            "lr_scheduler_type": "cosine", "warmup_steps": max(1, steps // 20), "max_grad_norm": 1.0,
            "per_device_train_batch_size": group * NUM_PROMPTS, "num_generations": group, "num_iterations": 4,
            "save_steps": 100000,
        },
        "logging": {"report_to": ["jsonl"], "progress": False},
    }


FLOOR = "floor"


def run(problem: Problem, method: str, objective: dict[str, Any], estimator: dict[str, Any], seed: int,
        steps: int, every: int, group: int = G) -> dict[str, Any]:
    """Train ``objective`` (or the floor) on ``problem`` from ``seed`` with ``group`` completions per
    prompt; exact curve and summary."""
    torch.set_num_threads(1)
    registry = registry_with_floor()
    floor = method == FLOOR
    objective = {"name": "uniform_wdce"} if floor else {**objective, "alpha": problem.alpha}
    tracker = ExactTracker(problem, every)
    with tempfile.TemporaryDirectory() as tmp:
        raw = recipe(problem, objective, estimator, "target_draws" if floor else "ancestral", seed, steps, Path(tmp) / "run",
                     group)
        start = time.process_time()
        trainer = Trainer(build_config(raw, registry=registry), registry, callbacks=[tracker])
        tracker.setup(trainer)
        if floor:
            trainer.sampler.targets = {tuple(p): t for p, t, _ in tracker.targets}  # type: ignore[attr-defined]
        result = trainer.train()
        seconds = time.process_time() - start
    final = tracker.curve[-1]
    tail = [m for m in result.metrics if "ess" in m][-max(1, steps // 10):]
    return {
        "problem": problem.name, "method": method, "seed": seed, "cpu_seconds": seconds,
        "kl_ref": tracker.kl_ref, "kl_ratio": final["kl"] / tracker.kl_ref, "final": final,
        "entropy_target": tracker.target_entropy, "reward_target": tracker.target_reward,
        "entropy_ref": tracker.ref_entropy, "ess": statistics.mean(m["ess"] for m in tail) if tail else math.nan,
        "frac_groups_identical": statistics.mean(m.get("frac_groups_identical", 0.0) for m in tail) if tail else 0.0,
        "collapsed": final["kl"] > tracker.kl_ref or final["entropy"] < 0.5 * tracker.target_entropy,
        "curve": tracker.curve, "problem_spec": problem_spec(problem),
    }


def problem_spec(problem: Problem) -> dict[str, Any]:
    spec = asdict(problem)
    if problem.block_size is None:  # bidirectional problems keep the spec they always had
        del spec["block_size"]
    return spec


def run_all(jobs: Sequence[tuple], processes: int) -> list[dict[str, Any]]:
    """``run(*job)`` for every job, ``processes`` at a time (one thread each), printing as they finish."""
    import multiprocessing as mp

    results = []
    with mp.get_context("spawn").Pool(processes) as pool:
        for r in pool.imap_unordered(_run_star, jobs):
            print(f"{r['problem']} {r['method']} seed {r['seed']}: KL ratio {r['kl_ratio']:.3f} "
                  f"H {r['final']['entropy']:.2f}/{r['entropy_target']:.2f} ess {r['ess']:.2f} "
                  f"({r['cpu_seconds']:.0f} cpu-s)", flush=True)
            results.append(r)
    return results


def _run_star(job: tuple) -> dict[str, Any]:
    return run(*job)
