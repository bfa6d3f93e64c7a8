"""The golden runs: one short deterministic training run per objective configuration.

Each case is a recipe (the sections of a ``RunConfig``) small enough to train in seconds on CPU,
chosen so that every code path of its objective runs: several chunks per rollout batch (so the
objective state is concatenated and sliced again), several inner iterations (reused rollouts,
``begin_iteration``), rewards that differ inside a group (non-zero advantages, weights that move),
and completions that stop early (the EOS truncation of the valid mask).

``run_case`` trains one case and returns what a golden file stores: the metrics of every step and a
checksum of the final weights. ``python -m tests.golden.regenerate`` rewrites the stored files; only
an intended change of behaviour may do that, and its commit says so.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).parent
VOLATILE = {"elapsed"}  # wall-clock seconds: the only metric that may differ between runs

# The shipped Countdown base samples right and wrong answers, so rewards differ within a group.
_TEXT = {
    "model": {"name": "tiny", "path": "builtin:countdown"},
    "task": {"name": "countdown", "variant": "toy", "operators": "+-", "num_generated_train": 64,
             "num_generated_test": 8},
    "sampler": {"name": "block", "max_completion_length": 8, "block_length": 8, "steps": 8, "temperature": 1.0},
    "train": {"max_steps": 4, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
              "num_generations": 4, "num_iterations": 2, "save_steps": 2, "learning_rate": 1e-3, "seed": 3},
    "eval": {"during_training": False},
    "logging": {"report_to": ["jsonl"], "progress": False},
}
# A 2x2 Ising lattice on a fresh token-only model: the energy objectives' setting (MDNS).
_ISING = {
    "model": {"name": "tiny", "charset": None, "seed": 5,
              "architecture": {"vocab_size": 3, "d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_hidden": 64,
                               "max_seq_len": 8, "absolute_positions": True, "init_std": 0.2}},
    "task": {"name": "ising", "L": 2, "beta": 0.6, "eval_samples": 16},
    "sampler": {"name": "ancestral", "max_completion_length": 4, "temperature": 1.0},
    "estimator": {"name": "exact"},
    "train": {"max_steps": 4, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
              "num_generations": 16, "num_iterations": 2, "save_steps": 2, "learning_rate": 3e-3, "seed": 4},
    "eval": {"during_training": False},
    "logging": {"report_to": ["jsonl"], "progress": False},
}


def _case(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if section == "train" else dict(values)
    return raw


_ELBO = {"name": "elbo", "num_samples": 2, "mask_scheme": "antithetic"}

CASES: dict[str, dict[str, Any]] = {
    # DMPO's defaults: ELBO weights, no baseline, a quarter of every group drawn from the reference
    "dmpo_default": _case(_TEXT, estimator=_ELBO, objective={"name": "dmpo", "alpha": 0.5}),
    # DMPO as published: ELBO weights, the negative baseline; loss masks up to the first EOS
    "dmpo": _case(_TEXT, estimator=_ELBO, objective={"name": "dmpo", "preset": "published", "alpha": 0.5,
                                                    "mask_after_eos": True}),
    # the unbiased baseline re-weighs at every inner iteration; adaptive c; std scaling
    "dmpo_unbiased": _case(_TEXT, estimator=_ELBO, objective={
        "name": "dmpo", "alpha": 0.5, "baseline": "unbiased", "target_ess": 0.6, "scale_by_std": True, "defensive": 0.0}),
    # DMPO's first version: exact path weights from the ancestral sampler, the reference scored on its path
    "dmpo_path": _case(
        _TEXT,
        sampler={"name": "ancestral", "max_completion_length": 8, "temperature": 1.0},
        estimator={"name": "exact"},
        objective={"name": "dmpo", "alpha": 0.5, "log_ratio": "path", "baseline": "mean", "proximal": 0.8,
                   "defensive": 0.0, "replay": 1},
    ),
    # exact path weights with the defensive share: reference draws relabelled along their paths
    "dmpo_path_defensive": _case(
        _TEXT,
        sampler={"name": "ancestral", "max_completion_length": 8, "temperature": 1.0},
        estimator={"name": "exact"},
        objective={"name": "dmpo", "alpha": 0.5, "log_ratio": "path", "replay": 1},
    ),
    # MDNS's WDCE on an energy target (uniform reference)
    "dmpo_ising": _case(_ISING, objective={
        "name": "dmpo", "alpha": 1.0, "log_ratio": "path", "reference": "uniform", "baseline": "none", "replay": 1}),
    "log_variance": _case(_ISING, objective={"name": "log_variance"}),
    "rerf": _case(_ISING, objective={"name": "rerf"}),
    "diffu_grpo": _case(_TEXT, estimator={"name": "one_step"},
                        objective={"name": "diffu_grpo", "beta": 0.04, "scale_rewards": True}),
    "coupled_grpo": _case(_TEXT, estimator={"name": "coupled"}, objective={"name": "coupled_grpo"}),
    "sft": _case(_TEXT, objective={"name": "sft"}, train={"num_iterations": 1, "save_steps": 1, "reference_noise": 0.3}),
    # plugin packages (plugins/*): skipped where they are not installed
    "wd1": _case(_TEXT, estimator={"name": "one_step"}, objective={"name": "wd1"}),
    "spg": _case(_TEXT, estimator={"name": "blockwise", "num_samples": 2}, objective={"name": "spg"}),
    "tracerl": _case(_TEXT, estimator={"name": "one_step"}, objective={"name": "tracerl", "shrinkage": 2}),
}
PLUGIN_CASES = {"wd1": "ddrl_wd1", "spg": "ddrl_spg", "tracerl": "ddrl_tracerl"}


def fingerprint() -> str:
    """What bit-for-bit equality of float results depends on besides the code."""
    return f"torch {torch.__version__} | cpu {torch.backends.cpu.get_cpu_capability()} | {platform.machine()}"


def weight_checksums(path: Path) -> dict[str, Any]:
    """sha256 over every tensor's bytes (sorted by name), and each tensor's float64 sum and norm."""
    tensors = load_file(str(path))
    digest = hashlib.sha256()
    summary = {}
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(name.encode())
        digest.update(t.numpy().tobytes())
        t64 = t.double()
        summary[name] = [t64.sum().item(), t64.norm().item()]
    return {"sha256": digest.hexdigest(), "tensors": summary}


def run_case(name: str, workdir: Path) -> dict[str, Any]:
    """Train case ``name`` in ``workdir`` on one CPU thread; return its golden record."""
    from ddrl.config import build_config
    from ddrl.registry import Registry
    from ddrl.training.trainer import Trainer

    raw = copy.deepcopy(CASES[name])
    raw["train"]["output_dir"] = str(workdir / name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split over threads may round differently
    try:
        registry = Registry()
        result = Trainer(build_config(raw, registry=registry), registry).train()
    finally:
        torch.set_num_threads(threads)
    steps = [{k: v for k, v in m.items() if k not in VOLATILE} for m in result.metrics if "loss" in m]
    return {
        "case": name,
        "recipe": CASES[name],
        "fingerprint": fingerprint(),
        "metrics": steps,
        "weights": weight_checksums(result.final_dir / "model.safetensors"),
    }


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def load_golden(name: str) -> dict[str, Any]:
    return json.loads(golden_path(name).read_text())


def write_golden(record: dict[str, Any]) -> Path:
    path = golden_path(record["case"])
    path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    return path


def differences(got: dict[str, Any], want: dict[str, Any], rtol: float | None = None) -> list[str]:
    """Where a run departs from its golden record: every float bit for bit (``rtol=None``) or
    within ``rtol`` (across machines whose float rounding differs); empty when they agree."""
    out = []
    if len(got["metrics"]) != len(want["metrics"]):
        return [f"{len(got['metrics'])} steps, golden {len(want['metrics'])}"]
    for g, w in zip(got["metrics"], want["metrics"]):
        if sorted(g) != sorted(w):
            out.append(f"step {w['step']}: metric names {sorted(set(g) ^ set(w))} differ")
        out.extend(
            f"step {w['step']}: {k} = {g[k]!r}, golden {w[k]!r}"
            for k in sorted(set(g) & set(w)) if not _same(g[k], w[k], rtol)
        )
    if rtol is None:
        if got["weights"]["sha256"] != want["weights"]["sha256"]:
            out.append("final weights: sha256 differs")
        return out
    for name, values in want["weights"]["tensors"].items():
        have = got["weights"]["tensors"].get(name)
        if have is None or not all(_same(a, b, rtol) for a, b in zip(have, values)):
            out.append(f"final weights: {name} sum/norm {have}, golden {values}")
    return out


def _same(a: Any, b: Any, rtol: float | None) -> bool:
    if rtol is None or not isinstance(a, float) or not isinstance(b, float):
        return a == b or (a != a and b != b)  # NaN equals NaN here
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + 1e-7 or (a != a and b != b)
