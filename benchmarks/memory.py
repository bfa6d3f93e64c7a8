"""Peak memory and time of one update at LLaDA-8B's real width (issue: scale, item 2).

A LLaDA-shaped policy with random weights (d_model 4096, 32 heads, SwiGLU 12,288, V = 126,464;
``LLaDAPolicy.random``, no download) with k transformer layers runs one DMPO update and one
diffu-GRPO update on a synthetic micro-batch, each configuration in a fresh process whose peak
resident memory is read from the kernel (VmHWM, reset right before the update). Scoring is *lean*
(the head on the scored positions only, chunked log-softmax; ``ddrl.models.head``) or *naive* (the
head on every position, the full log-softmax). The per-layer slope of the peak is fitted over k and
extrapolated to LLaDA-8B's 32 layers.

    python benchmarks/memory.py --quick     # LoRA, float32, k = 1, 2 (about 3 min on 2 cores)
    python benchmarks/memory.py             # + k = 4, bfloat16, gradient checkpointing, full
    python benchmarks/memory.py --tiny      # the same code at width 64 (seconds; CI)

An update = scoring the old and reference policies (DMPO: 4 antithetic ELBO masks; diffu-GRPO: d1's
one-step view) + the loss (DMPO: 4 loss masks) + backward + an optimizer step. Time per rollout
batch = that scoring + mu x (loss, backward, step) with the published mu (DMPO 8, diffu-GRPO 12).
Last line: ``result: lean_vs_naive_peak=… dmpo_vs_diffu_grpo_update_time=… est_8b_lora_peak_gib=…``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WIDTH_8B = {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288,
            "vocab_size": 126464, "embedding_size": 126464, "mask_token_id": 126336}
WIDTH_TINY = {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 96,
              "vocab_size": 1000, "embedding_size": 1000, "mask_token_id": 999}
MU = {"dmpo": 8, "diffu_grpo": 12}  # published optimizer steps per rollout batch


@dataclass(frozen=True)
class Spec:
    objective: str  # dmpo | diffu_grpo
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


def vm(field: str) -> float:
    """GiB of /proc/self/status's ``field`` (VmHWM: peak resident, VmRSS: resident now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(spec: Spec) -> dict[str, Any]:
    """Build the policy, run one update; peak memory above the resident state before it, times."""
    import torch

    torch.set_num_threads(2)
    policy, objective, estimator = _components(spec)
    rollout = _rollout(spec, policy)
    ref = policy.frozen_reference()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
    from ddrl.objectives.base import ObjectiveContext

    ctx = ObjectiveContext(policy, estimator, ref, generator=torch.Generator().manual_seed(0), num_iterations=1,
                           loss_micro_batch_size=spec.micro, backward=lambda part: part.backward())
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
    return {**asdict(spec), "steady_gib": steady, "peak_gib": peak, "update_gib": peak - steady,
            "score_seconds": scored - start, "step_seconds": end - scored,
            "rollout_batch_seconds": (scored - start) + MU[spec.objective] * (end - scored)}


def _components(spec: Spec) -> tuple[Any, Any, Any]:
    import torch

    from ddrl.estimators.elbo import ElboConfig, ElboEstimator
    from ddrl.estimators.one_step import OneStepConfig, OneStepEstimator
    from ddrl.models.llada import LLaDAPolicy
    from ddrl.models.lora import LoraSettings
    from ddrl.objectives.dmpo import DMPO, DMPOConfig
    from ddrl.objectives.grpo import DiffuGRPO, DiffuGRPOConfig

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
    micro = {"micro_batch_size": spec.micro}  # lean: the no-gradient scoring in micro-batches of views too
    if spec.objective == "dmpo":
        estimator = ElboEstimator(ElboConfig(num_samples=4, mask_scheme="antithetic", **micro))
        return policy, DMPO(DMPOConfig(preset="published")), estimator
    return policy, DiffuGRPO(DiffuGRPOConfig()), OneStepEstimator(OneStepConfig(**micro))


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


def _run(spec: Spec) -> dict[str, Any]:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:  # a fresh process: its peak is this update's alone
        return pool.apply(measure, (spec,))


def grid(quick: bool, tiny: bool) -> list[Spec]:
    def spec(objective: str, layers: int, scoring: str, **kw: Any) -> Spec:
        # lean = the head on scored positions + backward per micro-batch of views (one replicate of
        # the group at a time): what train.loss_micro_batch_size gives; naive = one graph, full head
        micro = Spec.completions if scoring == "lean" else None
        return Spec(objective, layers, scoring, tiny=tiny, micro=micro, **kw)

    specs = [spec("dmpo", 1, "naive"), spec("dmpo", 1, "lean"), spec("dmpo", 2, "lean"), spec("diffu_grpo", 1, "lean")]
    if quick:
        return specs
    specs += [spec("dmpo", 2, "naive"), spec("dmpo", 4, "lean"), spec("dmpo", 4, "naive"), spec("diffu_grpo", 1, "naive"),
              spec("dmpo", 2, "lean", checkpointing=True), spec("dmpo", 2, "naive", checkpointing=True),
              spec("dmpo", 4, "lean", checkpointing=True), spec("dmpo", 4, "naive", checkpointing=True),
              spec("dmpo", 1, "lean", dtype="bfloat16"),
              spec("dmpo", 2, "lean", dtype="bfloat16"), spec("dmpo", 1, "lean", lora=False, dtype="bfloat16")]
    return specs


def fit(rows: list[dict[str, Any]], **where: Any) -> tuple[float, float]:
    """Least-squares (intercept, slope per layer) of the peak over k for rows matching ``where``."""
    pts = [(r["layers"], r["peak_gib"]) for r in rows if all(r[k] == v for k, v in where.items())]
    if len({k for k, _ in pts}) < 2:
        return float("nan"), float("nan")
    n = len(pts)
    mx, my = sum(k for k, _ in pts) / n, sum(p for _, p in pts) / n
    slope = sum((k - mx) * (p - my) for k, p in pts) / sum((k - mx) ** 2 for k, _ in pts)
    return my - slope * mx, slope


def report(rows: list[dict[str, Any]]) -> str:
    lines = ["| objective | k | scoring | dtype | LoRA | ckpt | peak GiB | update GiB | score s | step s | rollout batch s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['layers']} | {r['scoring']} | {r['dtype']} | {r['lora']} | "
                     f"{r['checkpointing']} | {r['peak_gib']:.2f} | {r['update_gib']:.2f} | {r['score_seconds']:.1f} | "
                     f"{r['step_seconds']:.1f} | {r['rollout_batch_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="width 64, V = 1000: the code path in seconds")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/memory.json"))
    args = parser.parse_args()
    rows = []
    for spec in grid(args.quick, args.tiny):
        rows.append(_run(spec))
        r = rows[-1]
        print(f"{spec.objective} k={spec.layers} {spec.scoring} {spec.dtype} lora={spec.lora} ckpt={spec.checkpointing}: "
              f"peak {r['peak_gib']:.2f} GiB (update {r['update_gib']:.2f}), step {r['step_seconds']:.1f} s", flush=True)
    print(report(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    pick = {r["scoring"]: r for r in rows if r["objective"] == "dmpo" and r["layers"] == 1 and r["dtype"] == "float32"
            and r["lora"] and not r["checkpointing"]}
    lean_vs_naive = pick["lean"]["update_gib"] / pick["naive"]["update_gib"]
    timing = {r["objective"]: r["rollout_batch_seconds"] for r in rows
              if r["layers"] == 1 and r["scoring"] == "lean" and r["dtype"] == "float32" and r["lora"] and not r["checkpointing"]}
    intercept, slope = fit(rows, objective="dmpo", scoring="lean", dtype="float32", lora=True, checkpointing=False)
    print(f"result: lean_vs_naive_peak={lean_vs_naive:.2f} "
          f"dmpo_vs_diffu_grpo_update_time={timing['dmpo'] / timing['diffu_grpo']:.2f} "
          f"est_8b_lora_peak_gib={intercept + 32 * slope:.1f}")


if __name__ == "__main__":
    main()
