"""Peak memory and time of one update at LLaDA-8B's real width (issue: scale, item 2).

A LLaDA-shaped policy with random weights (d_model 4096, 32 heads, SwiGLU 12,288, V = 126,464;
``LLaDAPolicy.random``, no download) with k transformer layers runs one DMPO update and one
diffu-GRPO update on a synthetic micro-batch, each policy in a fresh process whose peak resident
memory is read from the kernel (VmHWM, reset right before each update; AdamW's state allocated
before, as in a running job; glibc's mmap threshold fixed so that freed activations leave the
resident set). Scoring is *lean* (the head on the scored positions only, chunked log-softmax,
backward per micro-batch of views; ``ddrl.models.head``) or *naive* (the head on every position,
the full log-softmax, one graph). The per-layer slope of the peak is fitted over k and extrapolated
to LLaDA-8B's 32 layers.

    python benchmarks/memory.py --quick     # LoRA, float32, k = 1, 2 (about 4 min on 2 cores)
    python benchmarks/memory.py             # + k = 4, bfloat16, gradient checkpointing, full (27 min)
    python benchmarks/memory.py --tiny      # the same code at width 64 (seconds; CI)

An update = scoring with the old and reference policies + the loss + backward + an optimizer step.
DMPO (``DMPOConfig()``): 4 antithetic ELBO masks once per rollout batch, 4 loss masks per step,
mu = 4; diffu-GRPO (d1): one one-step view per inner iteration, scored by old and reference for each
of its mu = 12 iterations. Time per rollout batch = view sets scored x one set's scoring + mu x one
step (the least over ``--repeats`` rounds); the published DMPO settings (mu = 8) are the same score
and step. Last line: ``result: lean_vs_naive_peak=… dmpo_vs_diffu_grpo_update_time=… [its 32-layer
extrapolation where 3 depths were timed] est_8b_lora_peak_gib=…``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WIDTH_8B = {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288,
            "vocab_size": 126464, "embedding_size": 126464, "mask_token_id": 126336}
WIDTH_TINY = {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 96,
              "vocab_size": 1000, "embedding_size": 1000, "mask_token_id": 999}


@dataclass(frozen=True)
class Setting:
    """One objective as ddrl's trainer runs it per rollout batch."""

    objective: str  # dmpo | diffu_grpo
    mu: int  # optimizer steps per rollout batch
    score_sets: int  # view sets the old and the reference policy score per rollout batch
    preset: str = "published"  # DMPO: published | robust (DMPOConfig() defaults)


# DMPO scores old and reference once per rollout batch (4 antithetic ELBO masks) and draws R = 4
# fresh loss masks per step; diffu-GRPO (d1) scores old and reference on each inner iteration's own
# mask, mu view sets (``_GRPOFamily.prepare``). One view set and one step are timed; a rollout batch
# costs score_sets x the first + mu x the second. The published DMPO settings differ from
# DMPOConfig() in the weights' arithmetic only (same views); their mu is 8 (PUBLISHED_DMPO_MU).
SETTINGS = {
    # DMPOConfig() at mu = 4: the setting measured on problems nobody tuned for (docs/dmpo.md)
    "dmpo": Setting("dmpo", mu=4, score_sets=1, preset="robust"),
    "diffu_grpo": Setting("diffu_grpo", mu=12, score_sets=12),  # published (d1)
}
PUBLISHED_DMPO_MU = 8
# glibc's dynamic mmap threshold keeps freed activations (up to 32 MiB a block) in the heap, so the
# resident memory after one update would hide the next one's: a fixed threshold returns them
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Spec:
    """One fresh process: a policy of ``layers`` layers and the settings measured on it, in order."""

    settings: tuple[str, ...]
    layers: int
    scoring: str  # lean | naive
    dtype: str = "float32"
    lora: bool = True
    checkpointing: bool = False
    completions: int = 4  # rows per micro-batch (one group)
    prompt: int = 64
    length: int = 128
    tiny: bool = False
    micro: int | None = None  # views per backward (train.loss_micro_batch_size); None: one graph
    repeats: int = 1  # rounds of all settings; times are the least over the rounds


def vm(field: str) -> float:
    """GiB of /proc/self/status's ``field`` (VmHWM: peak resident, VmRSS: resident now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(spec: Spec) -> list[dict[str, Any]]:
    """Build the policy, then per setting one update: peak memory above the resident state before
    it (optimizer state already allocated, as in a running job) and the times of its parts."""
    import torch

    from ddrl.objectives.base import ObjectiveContext

    torch.set_num_threads(2)
    policy = _policy(spec)
    rollout = _rollout(spec, policy)
    ref = policy.frozen_reference()
    trained = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-6)
    for p in trained:  # AdamW's state exists before a steady-state update: allocate it now
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # first-call costs (thread pools, allocator) out of the timed updates
        policy.logits(rollout.batch.input_ids[:1, :16])
    rows: dict[str, dict[str, Any]] = {}
    for rep in range(spec.repeats):  # memory from the first round; the least time over the rounds
        for name in spec.settings:
            setting = SETTINGS[name]
            objective, estimator = _objective(setting, spec)
            ctx = ObjectiveContext(policy, estimator, ref, generator=torch.Generator().manual_seed(rep),
                                   num_iterations=1, loss_micro_batch_size=spec.micro,
                                   backward=lambda part: part.backward())
            steady = vm("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            start = time.perf_counter()
            with torch.no_grad():
                state = objective.weigh(rollout, objective.prepare(rollout, ctx), ctx).state
            scored = time.perf_counter()
            out = objective.loss(rollout, state, ctx, 0)
            if not out.backward_done:
                out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end = time.perf_counter()
            peak = vm("VmHWM")
            del state, out
            row = rows.setdefault(name, {**asdict(spec), "setting": name, **asdict(setting), "steady_gib": steady,
                                         "peak_gib": peak, "update_gib": peak - steady,
                                         "score_seconds": math.inf, "step_seconds": math.inf})
            row["score_seconds"] = min(row["score_seconds"], scored - start)
            row["step_seconds"] = min(row["step_seconds"], end - scored)
    for setting, row in zip(map(SETTINGS.get, spec.settings), rows.values()):
        row["rollout_batch_seconds"] = setting.score_sets * row["score_seconds"] + setting.mu * row["step_seconds"]
    return list(rows.values())


def _policy(spec: Spec) -> Any:
    import torch

    from ddrl.models.llada import LLaDAPolicy
    from ddrl.models.lora import LoraSettings

    published = {"model_type": "llada", "n_layers": spec.layers, "rope_theta": 500000.0,
                 **(WIDTH_TINY if spec.tiny else WIDTH_8B)}
    policy = LLaDAPolicy.random(published, dtype=getattr(torch, spec.dtype))
    if spec.lora:
        policy.enable_lora(LoraSettings(r=128 if not spec.tiny else 8, alpha=64, dropout=0.0))
    if spec.checkpointing:
        policy.set_gradient_checkpointing(True)
    policy.train()
    if spec.scoring == "naive":
        type(policy).supports_lean_scoring = False  # this process only: the head on every position
    return policy


def _objective(setting: Setting, spec: Spec) -> tuple[Any, Any]:
    from ddrl.estimators.elbo import ElboConfig, ElboEstimator
    from ddrl.estimators.one_step import OneStepConfig, OneStepEstimator
    from ddrl.objectives.dmpo import DMPO, DMPOConfig
    from ddrl.objectives.grpo import DiffuGRPO, DiffuGRPOConfig

    micro = {"micro_batch_size": spec.micro}  # lean: the no-gradient scoring in micro-batches of views too
    if setting.objective == "dmpo":
        estimator = ElboEstimator(ElboConfig(num_samples=4, mask_scheme="antithetic", **micro))
        return DMPO(DMPOConfig(preset=setting.preset)), estimator
    return DiffuGRPO(DiffuGRPOConfig()), OneStepEstimator(OneStepConfig(**micro))


def _rollout(spec: Spec, policy: Any) -> Any:
    import torch

    from ddrl.batch import SequenceBatch
    from ddrl.objectives.base import RolloutBatch

    g = torch.Generator().manual_seed(1)
    vocab = policy.mask_token_id  # real tokens only
    prompt = torch.randint(0, vocab, (spec.completions, spec.prompt), generator=g)
    completion = torch.randint(0, vocab, (spec.completions, spec.length), generator=g)
    batch = SequenceBatch.from_parts(prompt, completion)
    rewards = torch.rand(spec.completions, generator=g)
    return RolloutBatch(batch, rewards, torch.zeros(spec.completions, dtype=torch.long))


def _run(spec: Spec) -> list[dict[str, Any]]:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:  # a fresh process: its peaks are its own
        return pool.apply(measure, (spec,))


def grid(quick: bool, tiny: bool, repeats: int) -> list[Spec]:
    def spec(settings: tuple[str, ...], layers: int, scoring: str, **kw: Any) -> Spec:
        if len(settings) > 1:  # the timed processes
            kw["repeats"] = repeats
        # lean = the head on scored positions + backward per micro-batch of views (one replicate of
        # the group at a time): what train.loss_micro_batch_size gives; naive = one graph, full head
        micro = Spec.completions if scoring == "lean" else None
        return Spec(settings, layers, scoring, tiny=tiny, micro=micro, **kw)

    timed = ("dmpo", "diffu_grpo")  # the first one's memory is the headline (fresh process)
    specs = [spec(("dmpo",), 1, "naive"), spec(timed, 1, "lean"), spec(timed, 2, "lean")]
    if quick:
        return specs
    specs += [spec(("dmpo",), 2, "naive"), spec(timed, 4, "lean"), spec(("dmpo",), 4, "naive"),
              spec(("diffu_grpo",), 1, "naive"),
              spec(("dmpo",), 2, "lean", checkpointing=True), spec(("dmpo",), 2, "naive", checkpointing=True),
              spec(("dmpo",), 4, "lean", checkpointing=True), spec(("dmpo",), 4, "naive", checkpointing=True),
              spec(("dmpo",), 1, "lean", dtype="bfloat16"),
              spec(("dmpo",), 2, "lean", dtype="bfloat16"), spec(("dmpo",), 1, "lean", lora=False, dtype="bfloat16")]
    return specs


def fit(rows: list[dict[str, Any]], value: str = "peak_gib", **where: Any) -> tuple[float, float]:
    """Least-squares (intercept, slope per layer) of ``value`` over k for rows matching ``where``."""
    pts = [(r["layers"], r[value]) for r in rows if all(r[k] == v for k, v in where.items())]
    if len({k for k, _ in pts}) < 2:
        return float("nan"), float("nan")
    n = len(pts)
    mx, my = sum(k for k, _ in pts) / n, sum(p for _, p in pts) / n
    slope = sum((k - mx) * (p - my) for k, p in pts) / sum((k - mx) ** 2 for k, _ in pts)
    return my - slope * mx, slope


def report(rows: list[dict[str, Any]]) -> str:
    head = ("| setting | mu | k | scoring | dtype | LoRA | ckpt | peak GiB | update GiB | score s (one view set) "
            "| step s | rollout batch s |")
    lines = [head, "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['mu']} | "
                     f"{r['layers']} | {r['scoring']} | {r['dtype']} | {r['lora']} | {r['checkpointing']} | "
                     f"{r['peak_gib']:.2f} | {r['update_gib']:.2f} | {r['score_seconds']:.1f} | {r['step_seconds']:.1f} | "
                     f"{r['rollout_batch_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="width 64, V = 1000: the code path in seconds")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/memory.json"))
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of the timed updates, the least time kept (default: 1 with --quick, else 2)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    os.environ.update({k: v for k, v in MALLOC.items() if k not in os.environ})  # inherited by the workers
    rows: list[dict[str, Any]] = []
    for spec in grid(args.quick, args.tiny, repeats):
        for r in _run(spec):
            rows.append(r)
            print(f"{r['setting']} k={r['layers']} {r['scoring']} {r['dtype']} lora={r['lora']} ckpt={r['checkpointing']}: "
                  f"peak {r['peak_gib']:.2f} GiB (update {r['update_gib']:.2f}), score {r['score_seconds']:.1f} s, "
                  f"step {r['step_seconds']:.1f} s", flush=True)
    print(report(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    base = {"dtype": "float32", "lora": True, "checkpointing": False}
    first = {r["scoring"]: r for r in rows if r["setting"] == "dmpo" and r["layers"] == 1
             and all(r[k] == v for k, v in base.items())}  # fresh-process figures of the same 16 views
    lean_vs_naive = first["lean"]["update_gib"] / first["naive"]["update_gib"]
    lean = {**base, "scoring": "lean"}
    rows_published: list[dict[str, Any]] = []
    at_1 = {r["setting"]: r["rollout_batch_seconds"] for r in rows if r["layers"] == 1
            and all(r[k] == v for k, v in lean.items())}
    for r in rows:  # the published DMPO settings: the same score and step, mu = 8
        if r["setting"] == "dmpo":
            seconds = r["score_seconds"] + PUBLISHED_DMPO_MU * r["step_seconds"]
            rows_published.append({**r, "setting": "dmpo_published", "mu": PUBLISHED_DMPO_MU,
                                   "preset": "published", "rollout_batch_seconds": seconds})
    at_32 = {}
    for name in [*SETTINGS, "dmpo_published"]:
        a, b = fit(rows + rows_published, "rollout_batch_seconds", setting=name, **lean)
        at_32[name] = a + 32 * b
    intercept, slope = fit(rows, setting="dmpo", **lean)
    # the time's slope over k is a difference of timings: only printed where three depths or more were timed
    depths = {r["layers"] for r in rows if r["setting"] == "dmpo" and all(r[k] == v for k, v in lean.items())}
    extrapolated = ""
    if len(depths) >= 3:
        print("time per rollout batch at 32 layers (fitted over k): "
              + ", ".join(f"{n} {t:.0f} s" for n, t in at_32.items()))
        extrapolated = (f"dmpo_vs_diffu_grpo_update_time_32_layers={at_32['dmpo'] / at_32['diffu_grpo']:.2f} "
                        f"dmpo_published_vs_diffu_grpo_update_time_32_layers="
                        f"{at_32['dmpo_published'] / at_32['diffu_grpo']:.2f} ")
    print(f"result: lean_vs_naive_peak={lean_vs_naive:.2f} "
          f"dmpo_vs_diffu_grpo_update_time={at_1['dmpo'] / at_1['diffu_grpo']:.2f} {extrapolated}"
          f"est_8b_lora_peak_gib={intercept + 32 * slope:.1f}")


if __name__ == "__main__":
    main()
