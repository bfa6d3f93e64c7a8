"""Rollouts and updates at LLaDA-8B's size on one GPU, one command (issue 14, item 4).

A LLaDA-8B-shaped policy with random weights in bfloat16 (d_model 4096, 32 heads, 32 layers,
SwiGLU 12,288, V = 126,464; ``LLaDAPolicy.random``, no download) on the CUDA device:

1. **Memory plan** (printed first): parameters, LoRA parameters, gradients, AdamW states and the
   estimated activations per sample of the update with and without gradient checkpointing.
2. **Rollouts**: generated tokens/s of `block` and `fast` (prefix cache, the same fixed schedule:
   block 32, L/2 steps, temperature 0; built through the registry as a recipe builds them) at
   batch 1/8/32 and L = 256/512 after a 64-token random prompt; one warm-up call per sampler and
   batch first, ``torch.cuda.synchronize()`` around every timed call.
3. **LoRA DMPO update** (``preset: published``, ELBO weights from 4 antithetic masks, LoRA r=128
   alpha=64 on q,k,v,up, gradient checkpointing, backward per micro-batch of views, AdamW): 8
   completions x L 256 after a 64-token prompt; the second of two updates is timed (the first,
   which allocates the AdamW moments, is reported beside it), in all and in its two parts, the
   device synchronised around each: *score* (old and reference score one view set, weights) and
   *step* (loss with backward, AdamW). Seconds, ``torch.cuda.max_memory_allocated``. Then the
   **update time per rollout batch**, as ``benchmarks/memory.py`` counts it, on the same policy,
   adapters and completions: a DMPO update with ``DMPOConfig()`` defaults (``{"name": "dmpo"}``,
   the same 4 ELBO masks and 4 loss masks) and a diffu-GRPO update (``{"name": "diffu_grpo"}``, the
   ``one_step`` estimator with its defaults), each warmed up once, then timed with one view set
   scored (``num_iterations`` 1) and one step. Per rollout batch = view sets x score + mu x step:
   DMPO 1 set and mu = 4; the published DMPO settings the same score and step at mu = 8;
   diffu-GRPO (d1) 12 sets (old and reference score each inner iteration's own views) and mu = 12.
   Each update builds a fresh objective (one rollout batch: DMPO's replay pool stays empty); JSON
   ``update_per_rollout_batch``.
4. **Full FSDP step** (every parameter trains): ``fully_shard`` on each transformer block, then on
   the policy, in one process (a world of size 1 is created if none exists); a masked-denoising
   loss through the lean scoring path, backward, AdamW (the second of two steps timed). Precision ``mixed`` keeps float32 master
   weights, gradients and moments (16 bytes per parameter; compute in bfloat16), ``pure`` keeps
   all of them in bfloat16 (8 bytes); ``auto`` takes the first that fits the free device memory
   and the step is skipped, with the memory it needs, when neither does.

Model FLOPs utilisation (MFU) = model FLOPs / seconds / the device's dense bfloat16 peak. Model
FLOPs per token of a forward pass over a T-token canvas = 2 x (the weights of every matmul: the
attention and MLP projections and the LM head d_model x V) + 4 x T x d_model per layer (scores and
values); a training token counts 3 forward passes (the standard count: gradient checkpointing's
recomputation is not counted, and a LoRA backward that skips the frozen weights' gradients is
still counted as 2 forward passes). The tokens are counted as they enter the network, so the
count follows what each sampler and objective actually runs (e.g. `fast`'s windows).

    python benchmarks/gpu.py                      # the whole benchmark on the CUDA device
    python benchmarks/gpu.py --plan-only          # the memory plan only (no device needed)
    python benchmarks/gpu.py --layers 16          # half the depth, when 32 layers do not fit
    python benchmarks/gpu.py --batches 1,8 --lengths 256 --skip fsdp
    python benchmarks/gpu.py --dry-run            # every code path at width 64 on the CPU (seconds; CI)

Out of memory in one configuration is recorded as "OOM" with the setting to lower, and the next
configuration runs. Writes a markdown table per section, JSON to ``--out`` (docs/figures/gpu.json),
and a last line ``result: device=… fast_vs_block_tokens_per_s=… dmpo_lora_update_s=… mfu_update=…
dmpo_vs_diffu_grpo_update_time=…`` (the speed ratio at batch 8, L 256, or the largest batch x L where
both samplers ran; the published DMPO update's seconds and MFU; DMPO's (defaults, mu = 4) time per
rollout batch over diffu-GRPO's; "n/a" where a value could not be measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

WIDTH_8B = {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288,
            "vocab_size": 126464, "embedding_size": 126464, "mask_token_id": 126336}  # as benchmarks/memory.py
WIDTH_TINY = {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 96,
              "vocab_size": 1000, "embedding_size": 1000, "mask_token_id": 999}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj")  # LLaDAPolicy.default_lora_targets
# dense bfloat16 tensor-core peaks (TFLOP/s, NVIDIA's datasheets without sparsity) by device name;
# the first match wins (H100 PCIe and NVL before H100; an A10G is not an A10)
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756.0), (r"H100 NVL", 835.0), (r"H100", 989.0), (r"H200", 989.0), (r"A100", 312.0),
    (r"L40S", 362.0), (r"\bA10\b", 125.0), (r"RTX 4090", 165.0),
)
NOMINAL_CPU_TFLOPS = 0.1  # dry run: a nominal peak, only to exercise the arithmetic
GIB = 2**30


@dataclass(frozen=True)
class Settings:
    dry_run: bool
    device: str  # cuda:0 | cpu
    dtype: str  # bfloat16 on the GPU, float32 in the dry run
    layers: int
    width: dict[str, int]
    prompt_length: int
    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    block_length: int
    update_batch: int
    update_length: int
    lora_r: int
    lora_alpha: float
    fsdp_precision: str  # auto | mixed | pure
    skip: tuple[str, ...]
    peak_tflops: float | None
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)  # type: ignore[no-any-return]

    def published(self) -> dict[str, Any]:
        """LLaDA-8B's published config.json (at ``layers`` layers, or the dry run's width)."""
        return {"model_type": "llada", "n_layers": self.layers, "rope_theta": 500000.0, **self.width}


# ---------------------------------------------------------------------------------------------
# arithmetic: parameters, FLOPs, memory


def parameter_counts(published: dict[str, Any], lora_r: int = 0,
                     lora_targets: tuple[str, ...] = LORA_TARGETS) -> dict[str, int]:
    """Parameters of a LLaDA config: ``matmul`` (every projection and the LM head: what a token's
    forward multiplies by), ``embedding``, ``norms``, ``total``, and ``lora`` (adapters of rank
    ``lora_r`` on ``lora_targets``)."""
    d, h, layers = int(published["d_model"]), int(published["mlp_hidden_size"]), int(published["n_layers"])
    kv = d * int(published["n_kv_heads"]) // int(published["n_heads"])
    vocab = int(published.get("embedding_size") or published["vocab_size"])
    shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
              "gate_proj": (d, h), "up_proj": (d, h), "down_proj": (h, d)}  # (in, out)
    per_layer = sum(i * o for i, o in shapes.values())
    lora = layers * sum(lora_r * (shapes[t][0] + shapes[t][1]) for t in lora_targets) if lora_r else 0
    matmul = layers * per_layer + d * vocab  # + the LM head
    norms = (2 * layers + 1) * d
    embedding = d * vocab
    return {"matmul": matmul, "embedding": embedding, "norms": norms, "total": matmul + embedding + norms, "lora": lora}


def forward_flops_per_token(published: dict[str, Any], context: int) -> float:
    """Model FLOPs of one token's forward pass over a ``context``-token canvas: 2 per matmul weight
    (projections + LM head) + 4 x context x d_model per layer (attention scores and values)."""
    d, layers = int(published["d_model"]), int(published["n_layers"])
    return 2.0 * parameter_counts(published)["matmul"] + 4.0 * context * d * layers


def model_flops(published: dict[str, Any], context: int, inference_tokens: int, training_tokens: int) -> float:
    """Forward-only tokens count once, training tokens three times (forward + backward)."""
    return forward_flops_per_token(published, context) * (inference_tokens + 3 * training_tokens)


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Achieved model FLOP/s over the peak; None when the peak is unknown."""
    if peak_tflops is None or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)


def peak_tflops_for(device_name: str) -> float | None:
    """The dense bfloat16 peak of a CUDA device from its name, or None when it is not in the table."""
    for pattern, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return peak
    return None


def activation_bytes_per_token_layer(published: dict[str, Any], act_bytes: int, lora: bool) -> int:
    """Estimated bytes one decoder layer keeps for the backward pass per token (SDPA: no T x T
    scores kept): two RMSNorms in float32 (input and normalised, 16 d), q, k, v after rotary and
    the attention output (4 d), the MLP's gate, silu, up and product (4 h), and with LoRA the
    dropout outputs of the four adapted inputs (4 d)."""
    d, h = int(published["d_model"]), int(published["mlp_hidden_size"])
    return 16 * d + act_bytes * (4 * d + 4 * h + (4 * d if lora else 0))


def memory_plan(s: Settings) -> dict[str, Any]:
    """GiB of each part of the chosen configuration (estimates; the benchmark reports measured peaks beside them)."""
    pub = s.published()
    counts = parameter_counts(pub, s.lora_r)
    w = s.torch_dtype.itemsize
    layers, d = s.layers, int(pub["d_model"])
    kv = d * int(pub["n_kv_heads"]) // int(pub["n_heads"])
    vocab = int(pub["embedding_size"])
    t_update = s.prompt_length + s.update_length
    full = activation_bytes_per_token_layer(pub, w, lora=True) * layers * t_update
    # checkpointing keeps each layer's input and recomputes one layer at a time
    ckpt = w * d * layers * t_update + activation_bytes_per_token_layer(pub, w, lora=True) * t_update
    # lean scoring: a [chunk, V] float32 block of logits, its softmax and its gradient
    head_chunk = 3 * 4 * min(2**24, s.update_batch * s.update_length * vocab)
    lora_states = counts["lora"] * 4 * (1 + 1 + 2)  # float32 adapters, gradients, two moments
    update = counts["total"] * w + lora_states + s.update_batch * ckpt + head_chunk
    b, length = max(s.batches), max(s.lengths)
    t_roll = s.prompt_length + length
    rows = {
        "parameters": (counts["total"], counts["total"] * w),
        "lora_parameters": (counts["lora"], counts["lora"] * 4),
        "lora_gradients": (counts["lora"], counts["lora"] * 4),
        "lora_adamw_states": (2 * counts["lora"], 2 * counts["lora"] * 4),
        "full_gradients_mixed": (counts["total"], counts["total"] * 4),
        "full_adamw_states_mixed": (2 * counts["total"], 2 * counts["total"] * 4),
        "full_step_mixed": (counts["total"], counts["total"] * 16),
        "full_step_pure": (counts["total"], counts["total"] * (w + w + 2 * w)),
        "activations_per_sample_no_ckpt": (t_update, full),
        "activations_per_sample_ckpt": (t_update, ckpt),
        "lora_update_total_ckpt": (s.update_batch, update),
        "rollout_logits_block": (b * t_roll * vocab, b * t_roll * vocab * w),
        "rollout_kv_cache_fast": (2 * layers * b * t_roll * kv, 2 * layers * b * t_roll * kv * w),
    }
    return {name: {"count": int(n), "gib": nbytes / GIB} for name, (n, nbytes) in rows.items()}


PLAN_NOTES = {
    "parameters": "all weights in the model dtype",
    "lora_parameters": "adapters r={r} on q,k,v,up, float32",
    "lora_gradients": "float32",
    "lora_adamw_states": "two float32 moments",
    "full_gradients_mixed": "full fine-tuning, float32",
    "full_adamw_states_mixed": "full fine-tuning, two float32 moments",
    "full_step_mixed": "FSDP mixed: float32 weights + gradients + moments (16 B/param)",
    "full_step_pure": "FSDP pure: weights + gradients + moments in the model dtype",
    "activations_per_sample_no_ckpt": "count = tokens (prompt + L); estimate",
    "activations_per_sample_ckpt": "layer inputs + one layer recomputed; estimate",
    "lora_update_total_ckpt": "count = views per backward; weights + LoRA state + activations",
    "rollout_logits_block": "B x T x V at the largest batch and L",
    "rollout_kv_cache_fast": "keys + values of every layer at the largest batch and L",
}


def fsdp_need_gib(s: Settings, precision: str) -> float:
    """Estimated peak of the full step in GiB: the sharded state (``mixed``: float32 weights,
    gradients and two moments, 16 B/param; ``pure``: all four in the model dtype); the unsharded
    compute-dtype weights and gradients of the root group (embedding + head: the largest) and of
    two decoder layers (one prefetched), plus their float32 gradient copies for the reduce-scatter
    with ``mixed``; the head's float32 gradient of lean scoring; the checkpointed activations of
    one micro-batch; 1 GiB of slack."""
    pub = s.published()
    counts = parameter_counts(pub)
    w = s.torch_dtype.itemsize
    d, layers = int(pub["d_model"]), s.layers
    per_param = 16 if precision == "mixed" else 4 * w
    per_unsharded = 2 * w + (4 if precision == "mixed" else 0)
    layer = (counts["total"] - 2 * counts["embedding"] - d) // max(layers, 1)
    unsharded = (2 * counts["embedding"] + 2 * layer) * per_unsharded
    head_grad = 4 * counts["embedding"]
    ckpt = memory_plan(s)["activations_per_sample_ckpt"]["gib"] * GIB
    return (counts["total"] * per_param + unsharded + head_grad + s.update_batch * ckpt) / GIB + 1.0


# ---------------------------------------------------------------------------------------------
# the device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            pass


def peak_gib(device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated``, or on the CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def free_gib(device: torch.device) -> tuple[float, float]:
    """(free, total) GiB of the device; on the CPU the host's available and total memory."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free / GIB, total / GIB
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemAvailable"] / 2**20, info["MemTotal"] / 2**20


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def guarded(what: str, advice: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one configuration; out of device memory becomes an "OOM" record naming the setting to lower."""
    try:
        return {"status": "ok", **fn()}
    except torch.cuda.OutOfMemoryError:
        pass  # leave the except block first, so that the traceback's frames (and tensors) are freed
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    message = f"out of memory in {what}: {advice}"
    log(message)
    return {"status": "OOM", "message": message}


@dataclass
class TokenCount:
    inference: int = 0  # tokens through forward passes without gradient
    training: int = 0  # tokens through forward passes with gradient (a backward follows)


@contextmanager
def counting_tokens(embedding: torch.nn.Module) -> Iterator[TokenCount]:
    """Counts the tokens entering the network (its embedding) while the block runs. Gradient
    checkpointing recomputes decoder layers, never the embedding, so recomputation is not counted."""
    count = TokenCount()

    def hook(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if torch.is_grad_enabled():
            count.training += args[0].numel()
        else:
            count.inference += args[0].numel()

    handle = embedding.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def log(message: str) -> None:
    print(f"[gpu] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# the benchmark


def build_policy(s: Settings, dtype: torch.dtype) -> Any:
    from ddrl.models.llada import LLaDAPolicy

    start = time.perf_counter()
    policy = LLaDAPolicy.random(s.published(), dtype=dtype, seed=s.seed).to(s.device)
    log(f"built a random LLaDA policy ({s.layers} layers, {str(dtype).removeprefix('torch.')}) "
        f"in {time.perf_counter() - start:.1f} s")
    return policy


def build(registry: Any, group: str, spec: dict[str, Any]) -> Any:
    """A component from a recipe-style section, validated by its registered Config (as ``ddrl train``)."""
    component = registry.get(group, spec["name"])
    return registry.build(group, component.Config.model_validate(spec))


def sampler_spec(name: str, length: int, block_length: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "max_completion_length": length, "block_length": min(block_length, length),
                            "steps": max(1, length // 2), "temperature": 0.0}
    if name == "fast":
        spec.update(cache="prefix", threshold=None)
    return spec


def random_ids(rows: int, length: int, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, mask_id, (rows, length), generator=generator)  # every id but the mask (and above)


def bench_samplers(policy: Any, s: Settings, registry: Any) -> list[dict[str, Any]]:
    device = torch.device(s.device)
    pub = s.published()
    g = torch.Generator().manual_seed(s.seed)
    policy.eval()
    rows: list[dict[str, Any]] = []
    warm: set[tuple[str, int]] = set()
    for length in s.lengths:
        for batch in s.batches:
            prompts = random_ids(batch, s.prompt_length, policy.mask_token_id, g).to(device)
            for name in ("block", "fast"):
                sampler = build(registry, "samplers", sampler_spec(name, length, s.block_length))
                advice = (f"lower the batch size (--batches, now {batch}) or L (--lengths, now {length}), "
                          f"or use fewer layers (--layers, now {s.layers})")

                def run(sampler: Any = sampler, name: str = name, batch: int = batch, length: int = length,
                        prompts: torch.Tensor = prompts) -> dict[str, Any]:
                    if (name, batch) not in warm:  # one block at this batch: kernels, allocator, caches
                        short = build(registry, "samplers", sampler_spec(name, s.block_length, s.block_length))
                        timed(device, lambda: short.sample(policy, prompts, generator=torch.Generator(device).manual_seed(0)))
                        warm.add((name, batch))
                    reset_peak(device)
                    with counting_tokens(policy.model.embed_tokens) as counter:
                        out, seconds = timed(device, lambda: sampler.sample(
                            policy, prompts, generator=torch.Generator(device).manual_seed(1)))
                    flops = model_flops(pub, s.prompt_length + length, counter.inference, counter.training)
                    return {"tokens_per_s": batch * length / seconds, "seconds": seconds, "nfe": int(out.nfe),
                            "full_passes": float(getattr(out, "full_passes", out.nfe)), "model_tflops": flops / 1e12,
                            "mfu": mfu(flops, seconds, s.peak_tflops), "peak_gib": peak_gib(device)}

                row = {"sampler": name, "batch": batch, "length": length,
                       **guarded(f"{name} at batch {batch}, L {length}", advice, run)}
                rows.append(row)
                if row["status"] == "ok":
                    log(f"{name:>5} batch {batch:>3} L {length:>4}: {row['tokens_per_s']:10.1f} tokens/s "
                        f"({row['seconds']:.2f} s, NFE {row['nfe']}, peak {row['peak_gib']:.2f} GiB)")
    return rows


@dataclass(frozen=True)
class RolloutBatchSetting:
    """An objective as ddrl's trainer runs it per rollout batch (``benchmarks/memory.py``'s settings)."""

    timed: str  # the timed update (``COMPARED``) whose scoring and step it costs
    mu: int  # optimizer steps per rollout batch
    score_sets: int  # view sets the old and the reference policy score per rollout batch


# DMPO (``DMPOConfig()``) scores old and reference once per rollout batch and takes mu = 4 steps; the
# published DMPO settings are the same views (score and step) at mu = 8; diffu-GRPO (d1) scores old
# and reference on each inner iteration's own view set (``_GRPOFamily.prepare``), mu = 12 of them
ROLLOUT_BATCH = {
    "dmpo": RolloutBatchSetting("dmpo", mu=4, score_sets=1),
    "dmpo_published": RolloutBatchSetting("dmpo", mu=8, score_sets=1),
    "diffu_grpo": RolloutBatchSetting("diffu_grpo", mu=12, score_sets=12),
}


def compared_specs(s: Settings) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(objective, estimator) sections of the updates timed for ``ROLLOUT_BATCH``: DMPO's defaults
    with ELBO weights from 4 antithetic masks (as the published update), diffu-GRPO with ``one_step``."""
    return {"dmpo": ({"name": "dmpo"}, elbo_spec(s)), "diffu_grpo": ({"name": "diffu_grpo"}, {"name": "one_step"})}


def elbo_spec(s: Settings) -> dict[str, Any]:
    return {"name": "elbo", "num_samples": 4, "mask_scheme": "antithetic", "micro_batch_size": s.update_batch}


def per_rollout_batch(updates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seconds per rollout batch of each ``ROLLOUT_BATCH`` setting = score_sets x one view set's
    scoring + mu x one step, from the timed updates' ``score_seconds`` and ``step_seconds``; and the
    ratios DMPO / diffu-GRPO (None where a part is missing)."""
    rows: dict[str, Any] = {}
    for name, setting in ROLLOUT_BATCH.items():
        part = updates.get(setting.timed)
        score, step = (part["score_seconds"], part["step_seconds"]) if part is not None else (None, None)
        seconds = setting.score_sets * score + setting.mu * step if score is not None and step is not None else None
        rows[name] = {**asdict(setting), "score_seconds": score, "step_seconds": step, "rollout_batch_seconds": seconds}

    def ratio(a: str, b: str) -> float | None:
        x, y = rows[a]["rollout_batch_seconds"], rows[b]["rollout_batch_seconds"]
        return x / y if x is not None and y else None

    return {"settings": rows, "dmpo_vs_diffu_grpo_update_time": ratio("dmpo", "diffu_grpo"),
            "dmpo_published_vs_diffu_grpo_update_time": ratio("dmpo_published", "diffu_grpo")}


def bench_lora_update(policy: Any, s: Settings, registry: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One DMPO update (old/ref scoring, loss by parts with backward, AdamW step), after one warm-up
    update; then the updates of ``compared_specs`` on the same policy and completions (warm-up, then
    timed), costed per rollout batch (``per_rollout_batch``; None when the first update failed)."""
    from ddrl.batch import SequenceBatch
    from ddrl.models.lora import LoraSettings
    from ddrl.objectives.base import ObjectiveContext, RolloutBatch

    device = torch.device(s.device)
    pub = s.published()
    # DMPO's published adapters: dropout 0.05 on LLaDA's published targets (q, k, v, up)
    policy.enable_lora(LoraSettings(r=s.lora_r, alpha=s.lora_alpha, dropout=0.05, target_modules=None))
    policy.set_gradient_checkpointing(True)
    policy.train()
    g = torch.Generator().manual_seed(s.seed + 1)
    b = s.update_batch
    prompt = random_ids(b, s.prompt_length, policy.mask_token_id, g)
    completion = random_ids(b, s.update_length, policy.mask_token_id, g)
    batch = SequenceBatch.from_parts(prompt, completion).to(device)
    rollout = RolloutBatch(batch, torch.rand(b, generator=g).to(device), torch.zeros(b, dtype=torch.long, device=device))
    ref = policy.frozen_reference()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6,
                                  fused=device.type == "cuda")

    def fresh(objective_spec: dict[str, Any], estimator_spec: dict[str, Any]) -> tuple[Any, Any]:
        """A new objective (an empty replay pool: one rollout batch, as benchmarks/memory.py) and estimator."""
        return build(registry, "objectives", objective_spec), build(registry, "estimators", estimator_spec)

    def update(objective: Any, estimator: Any, seed: int) -> tuple[float, float]:
        """One update; returns the seconds of its scoring (one view set: old and reference, weights)
        and of its step (loss, backward, AdamW), the device synchronised around each."""
        ctx = ObjectiveContext(policy, estimator, ref, generator=torch.Generator(device=device).manual_seed(seed),
                               num_iterations=1, loss_micro_batch_size=b, backward=lambda part: part.backward())
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            state = objective.weigh(rollout, objective.prepare(rollout, ctx), ctx).state
        sync(device)
        scored = time.perf_counter()
        out = objective.loss(rollout, state, ctx, 0)
        if not out.backward_done:
            out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return scored - start, time.perf_counter() - scored

    published = ({"name": "dmpo", "preset": "published"}, elbo_spec(s))

    def run() -> dict[str, Any]:
        _, first = timed(device, partial(update, *fresh(*published), 0))
        reset_peak(device)
        with counting_tokens(policy.model.embed_tokens) as counter:
            (score, step), seconds = timed(device, partial(update, *fresh(*published), 1))
        flops = model_flops(pub, s.prompt_length + s.update_length, counter.inference, counter.training)
        return {"seconds": seconds, "first_seconds": first, "score_seconds": score, "step_seconds": step,
                "peak_gib": peak_gib(device), "estimated_gib": memory_plan(s)["lora_update_total_ckpt"]["gib"],
                "inference_tokens": counter.inference, "training_tokens": counter.training,
                "model_tflops": flops / 1e12, "mfu": mfu(flops, seconds, s.peak_tflops)}

    def compare() -> dict[str, Any]:
        timed_updates: dict[str, dict[str, Any]] = {}
        for i, (name, (objective, estimator)) in enumerate(compared_specs(s).items()):
            seed = 2 * i + 2  # the published update took seeds 0 and 1
            _, first = timed(device, partial(update, *fresh(objective, estimator), seed))
            reset_peak(device)
            with counting_tokens(policy.model.embed_tokens) as counter:
                (score, step), seconds = timed(device, partial(update, *fresh(objective, estimator), seed + 1))
            timed_updates[name] = {"objective": objective["name"], "estimator": estimator["name"], "seconds": seconds,
                                   "first_seconds": first, "score_seconds": score, "step_seconds": step,
                                   "peak_gib": peak_gib(device), "inference_tokens": counter.inference,
                                   "training_tokens": counter.training}
            log(f"{name} update (one view set scored, one step): score {score:.2f} s, step {step:.2f} s "
                f"(first update {first:.2f} s), peak {timed_updates[name]['peak_gib']:.2f} GiB")
        return {"updates": timed_updates, **per_rollout_batch(timed_updates)}

    advice = (f"lower the number of completions (--update-batch, now {b}) or L (--update-length, now "
              f"{s.update_length}), or use fewer layers (--layers, now {s.layers})")
    head = {"completions": b, "prompt_length": s.prompt_length, "length": s.update_length, "lora_r": s.lora_r,
            "gradient_checkpointing": True}
    row = {**head, **guarded("the LoRA DMPO update", advice, run)}
    if row["status"] != "ok":
        return row, None
    log(f"LoRA DMPO update: {row['seconds']:.2f} s (score {row['score_seconds']:.2f} s, step "
        f"{row['step_seconds']:.2f} s; first {row['first_seconds']:.2f} s), "
        f"peak {row['peak_gib']:.2f} GiB (estimated {row['estimated_gib']:.2f})")
    comparison = {**head, **guarded("the DMPO and diffu-GRPO updates per rollout batch", advice, compare)}
    if comparison["status"] == "ok":
        settings = comparison["settings"]
        log("time per rollout batch: " + ", ".join(
            f"{n} {fmt(r['rollout_batch_seconds'])} s" for n, r in settings.items())
            + f"; DMPO / diffu-GRPO {fmt(comparison['dmpo_vs_diffu_grpo_update_time'])}")
    return row, comparison


@contextmanager
def process_group(device: torch.device) -> Iterator[bool]:
    """A world of size 1 unless one exists (nccl on CUDA, gloo on the CPU); destroyed on exit if
    created here. Yields whether it was created."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield False
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:  # a free port: other runs on this machine may hold 29500
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    else:
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def bench_fsdp_step(s: Settings) -> dict[str, Any]:
    """The full step in the first precision whose estimate fits the free memory (``auto``: mixed,
    then pure, which also runs when mixed runs out of memory anyway); skipped when none fits."""
    device = torch.device(s.device)
    reset_peak(device)
    free, total = free_gib(device)
    options = ("mixed", "pure") if s.fsdp_precision == "auto" else (s.fsdp_precision,)
    needs = {precision: fsdp_need_gib(s, precision) for precision in options}
    fitting = [precision for precision in options if needs[precision] <= free]
    head = {"free_gib": free, "device_gib": total, "completions": s.update_batch, "length": s.update_length,
            "gradient_checkpointing": True}
    if not fitting:
        least = min(options, key=needs.__getitem__)
        which = "" if s.fsdp_precision == "auto" else f" with --fsdp-precision {s.fsdp_precision}"
        message = (f"skipped: needs about {needs[least]:.0f} GiB{which}, device has {free:.0f} GiB free of "
                   f"{total:.0f}; lower --layers (now {s.layers})"
                   + (" or use --fsdp-precision pure" if s.fsdp_precision == "mixed" else ""))
        log(f"full FSDP step {message}")
        return {**head, "precision": least, "estimated_gib": needs[least], "status": "skipped", "message": message}
    row: dict[str, Any] = {}
    for precision in fitting:
        log(f"full FSDP step, precision {precision}: needs about {needs[precision]:.1f} GiB of {free:.1f} GiB free")
        fallback = precision != fitting[-1]
        advice = (f"use fewer layers (--layers, now {s.layers}) or fewer completions (--update-batch, now "
                  f"{s.update_batch})" + (", or --fsdp-precision pure" if precision == "mixed" else "")
                  + ("; trying pure next" if fallback else ""))
        row = {**head, "precision": precision, "estimated_gib": needs[precision],
               **guarded(f"the full FSDP step ({precision})", advice, partial(fsdp_step, s, precision))}
        if row["status"] == "ok":
            log(f"full FSDP step ({precision}): {row['seconds']:.2f} s (first {row['first_seconds']:.2f} s), "
                f"peak {row['peak_gib']:.2f} GiB (estimated {needs[precision]:.2f})")
            break
        reset_peak(device)
    return row


def fsdp_step(s: Settings, precision: str) -> dict[str, Any]:
    """Build a fresh policy, shard it (each decoder layer, then the root), run a masked-denoising
    forward/backward through lean scoring and an AdamW step twice (the first allocates the moments);
    the second is timed."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = torch.device(s.device)
    with process_group(device):
        policy = build_policy(s, torch.float32 if precision == "mixed" else s.torch_dtype)
        policy.set_gradient_checkpointing(True)
        policy.train()
        mp = (MixedPrecisionPolicy(param_dtype=s.torch_dtype, reduce_dtype=torch.float32)
              if precision == "mixed" else MixedPrecisionPolicy())
        for block in policy.model.layers:  # transformers' LlamaDecoderLayer: LLaDA's blocks
            fully_shard(block, mp_policy=mp)
        fully_shard(policy, mp_policy=mp)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=True)
        g = torch.Generator().manual_seed(s.seed + 2)
        b, t, p = s.update_batch, s.prompt_length + s.update_length, s.prompt_length
        targets = random_ids(b, t, policy.mask_token_id, g)
        scored = torch.zeros(b, t, dtype=torch.bool)
        scored[:, p:] = torch.rand(b, s.update_length, generator=g) < 0.5  # a masked-denoising view
        scored[:, p] = True
        inputs = targets.masked_fill(scored, policy.mask_token_id).to(device)
        targets, scored = targets.to(device), scored.to(device)

        def step() -> float:
            loss = -policy.target_logprobs(inputs, None, scored, targets).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        _, first = timed(device, step)
        with counting_tokens(policy.model.embed_tokens) as counter:
            loss, seconds = timed(device, step)
        flops = model_flops(s.published(), t, counter.inference, counter.training)
        return {"seconds": seconds, "first_seconds": first, "peak_gib": peak_gib(device), "loss": loss,
                "training_tokens": counter.training, "model_tflops": flops / 1e12,
                "mfu": mfu(flops, seconds, s.peak_tflops)}


def bench_model_sections(s: Settings) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
    """Rollouts, then the LoRA updates on the same weights (the published DMPO update and the
    per-rollout-batch comparison); the policy is freed on return."""
    from ddrl.registry import Registry

    registry = Registry()
    device = torch.device(s.device)
    built: dict[str, Any] = {}

    def make() -> dict[str, Any]:
        built["policy"] = build_policy(s, s.torch_dtype)
        return {}

    if "samplers" in s.skip and "lora" in s.skip:
        return [], None, None
    status = guarded("building the model", f"use fewer layers (--layers, now {s.layers})", make)
    if status["status"] != "ok":
        return [], status, None  # reported in the update's place: neither section could run
    policy = built.pop("policy")
    samplers = [] if "samplers" in s.skip else bench_samplers(policy, s, registry)
    update, comparison = (None, None) if "lora" in s.skip else bench_lora_update(policy, s, registry)
    del policy
    reset_peak(device)
    return samplers, update, comparison


# ---------------------------------------------------------------------------------------------
# the report


def headline_ratio(samplers: list[dict[str, Any]]) -> tuple[float | None, tuple[int, int] | None]:
    """fast/block tokens/s at batch 8, L 256, else at the largest batch x L where both ran."""
    ok = {(r["sampler"], r["batch"], r["length"]): r["tokens_per_s"] for r in samplers if r["status"] == "ok"}
    both = [(b, n) for (name, b, n) in ok if name == "block" and ("fast", b, n) in ok]
    if not both:
        return None, None
    at = (8, 256) if (8, 256) in both else max(both, key=lambda bn: (bn[0] * bn[1], bn[1]))
    return ok[("fast", *at)] / ok[("block", *at)], at


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def plan_table(plan: dict[str, Any], s: Settings) -> str:
    lines = ["| item | count | GiB | note |", "|---|---|---|---|"]
    for name, row in plan.items():
        lines.append(f"| {name} | {row['count']:,} | {row['gib']:.2f} | {PLAN_NOTES[name].format(r=s.lora_r)} |")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    dev = results["device"]
    parts = [f"Device: {dev['name']}; MFU against {dev['peak_note']}; peak GiB = {dev['memory_measure']}"]
    if results["samplers"]:
        lines = ["| sampler | batch | L | tokens/s | s | NFE | full passes | TFLOP | MFU | peak GiB |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["samplers"]:
            if r["status"] != "ok":
                lines.append(f"| {r['sampler']} | {r['batch']} | {r['length']} | {r['status']} | | | | | | |")
                continue
            lines.append(f"| {r['sampler']} | {r['batch']} | {r['length']} | {r['tokens_per_s']:.1f} | {r['seconds']:.2f} | "
                         f"{r['nfe']} | {r['full_passes']:.1f} | {r['model_tflops']:.4g} | {fmt(r['mfu'], '.3f')} | "
                         f"{r['peak_gib']:.2f} |")
        parts.append("Rollouts (generated tokens/s = batch x L / s; MFU of the forward passes run)\n\n" + "\n".join(lines))
    for key, title in (("lora_update", "LoRA DMPO update (preset: published)"), ("fsdp_step", "Full FSDP step")):
        r = results[key]
        if r is None:
            continue
        if r["status"] != "ok":
            parts.append(f"{title}: {r['status']}: {r['message']}")
            continue
        parts_s = " | score s | step s" if key == "lora_update" else ""
        parts_v = f" | {r['score_seconds']:.2f} | {r['step_seconds']:.2f}" if parts_s else ""
        extra = f" | {r['precision']}" if key == "fsdp_step" else ""
        columns = 7 + (2 if parts_s else 0) + (1 if extra else 0)
        parts.append(
            f"{title}\n\n| completions x L | s{parts_s} | first s | TFLOP | MFU | peak GiB | estimated GiB"
            f"{' | precision' if extra else ''} |\n|{'---|' * columns}\n"
            f"| {r['completions']} x {r['length']} | {r['seconds']:.2f}{parts_v} | {r['first_seconds']:.2f} | "
            f"{r['model_tflops']:.4g} | {fmt(r['mfu'], '.3f')} | {r['peak_gib']:.2f} | {r['estimated_gib']:.2f}{extra} |")
        if key == "lora_update" and results.get("update_per_rollout_batch") is not None:
            parts.append(rollout_batch_report(results["update_per_rollout_batch"]))
    return "\n\n".join(parts)


def rollout_batch_report(r: dict[str, Any]) -> str:
    """The per-rollout-batch comparison: a table of the settings and the DMPO / diffu-GRPO ratios."""
    title = (f"LoRA update time per rollout batch ({r['completions']} x {r['length']}; one view set's scoring "
             "by old + reference and one step timed; rollout batch s = view sets x score s + mu x step s)")
    if r["status"] != "ok":
        return f"{title}: {r['status']}: {r['message']}"
    lines = ["| setting | objective | estimator | mu | view sets scored | score s | step s | rollout batch s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in r["settings"].items():
        timed_update = r["updates"].get(row["timed"], {})
        objective = timed_update.get("objective", row["timed"]) + (" (published)" if name == "dmpo_published" else "")
        lines.append(f"| {name} | {objective} | {timed_update.get('estimator', 'n/a')} | {row['mu']} | "
                     f"{row['score_sets']} | {fmt(row['score_seconds'], '.3f')} | {fmt(row['step_seconds'], '.3f')} | "
                     f"{fmt(row['rollout_batch_seconds'])} |")
    ratios = (f"DMPO / diffu-GRPO per rollout batch: {fmt(r['dmpo_vs_diffu_grpo_update_time'])} "
              f"(published DMPO, mu 8: {fmt(r['dmpo_published_vs_diffu_grpo_update_time'])})")
    return f"{title}\n\n" + "\n".join(lines) + f"\n\n{ratios}"


def update_time_ratio(comparison: dict[str, Any] | None) -> float | None:
    """DMPO / diffu-GRPO update time per rollout batch, or None when it was not measured."""
    if comparison is None or comparison.get("status") != "ok":
        return None
    return comparison["dmpo_vs_diffu_grpo_update_time"]  # type: ignore[no-any-return]


def result_line(results: dict[str, Any]) -> str:
    ratio, _ = headline_ratio(results["samplers"])
    update = results["lora_update"] or {}
    ok = update.get("status") == "ok"
    device = re.sub(r"\s+", "_", results["device"]["name"])
    return (f"result: device={device} fast_vs_block_tokens_per_s={fmt(ratio)} "
            f"dmpo_lora_update_s={fmt(update['seconds'] if ok else None)} "
            f"mfu_update={fmt(update['mfu'] if ok else None, '.3f')} "
            f"dmpo_vs_diffu_grpo_update_time={fmt(update_time_ratio(results.get('update_per_rollout_batch')))}")


# ---------------------------------------------------------------------------------------------


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="width 64, 2 layers, float32 on the CPU: every code path in seconds")
    parser.add_argument("--plan-only", action="store_true", help="print the memory plan and stop (no device needed)")
    parser.add_argument("--layers", type=int, help="transformer layers (default 32; dry run 2)")
    parser.add_argument("--batches", type=ints, help="rollout batch sizes (default 1,8,32; dry run 1,2)")
    parser.add_argument("--lengths", type=ints, help="completion lengths L (default 256,512; dry run 16,32)")
    parser.add_argument("--prompt-length", type=int, help="random prompt tokens (default 64; dry run 8)")
    parser.add_argument("--block-length", type=int, help="sampler block length (default 32; dry run 8)")
    parser.add_argument("--update-batch", type=int, help="completions in the update (default 8; dry run 2)")
    parser.add_argument("--update-length", type=int, help="L of the update (default 256; dry run 16)")
    parser.add_argument("--lora-r", type=int, help="LoRA rank (default 128; dry run 8)")
    parser.add_argument("--fsdp-precision", choices=("auto", "mixed", "pure"), default="auto",
                        help="full step: mixed = float32 master weights and moments, pure = all in bfloat16")
    parser.add_argument("--skip", action="append", choices=("samplers", "lora", "fsdp"), default=[])
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, when it is not in the table")
    parser.add_argument("--out", type=Path, help="JSON (default docs/figures/gpu.json; dry run: a temporary file)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    dry = args.dry_run

    def pick(value: Any, gpu: Any, cpu: Any) -> Any:
        return value if value is not None else (cpu if dry else gpu)

    return Settings(
        dry_run=dry, device="cpu" if dry else "cuda:0", dtype="float32" if dry else "bfloat16",
        layers=pick(args.layers, 32, 2), width=WIDTH_TINY if dry else WIDTH_8B,
        prompt_length=pick(args.prompt_length, 64, 8), batches=pick(args.batches, (1, 8, 32), (1, 2)),
        lengths=pick(args.lengths, (256, 512), (16, 32)), block_length=pick(args.block_length, 32, 8),
        update_batch=pick(args.update_batch, 8, 2), update_length=pick(args.update_length, 256, 16),
        lora_r=pick(args.lora_r, 128, 8), lora_alpha=64.0, fsdp_precision=args.fsdp_precision,
        skip=tuple(args.skip), peak_tflops=args.peak_tflops, seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_from(args)
    if not (s.dry_run or args.plan_only or torch.cuda.is_available()):
        print("no CUDA device: run with --dry-run for the CPU code path", file=sys.stderr)
        return 2
    plan = memory_plan(s)
    print(f"Memory plan: {'dry run, width 64' if s.dry_run else 'LLaDA-8B shape'}, {s.layers} layers, {s.dtype}, "
          f"update {s.update_batch} x (prompt {s.prompt_length} + L {s.update_length})\n\n{plan_table(plan, s)}\n",
          flush=True)
    if args.plan_only:
        return 0
    if s.dry_run:
        torch.set_num_threads(1)  # tiny shapes: more threads only contend
        name, peak = "cpu", args.peak_tflops or NOMINAL_CPU_TFLOPS
        peak_note = f"nominal CPU peak {peak} TFLOP/s (dry run: the MFU arithmetic only, not a measurement)"
    else:
        name = torch.cuda.get_device_name(0)
        peak = args.peak_tflops or peak_tflops_for(name)
        peak_note = (f"{peak} TFLOP/s dense bf16" if peak else
                     f"MFU cannot be computed: {name!r} is not in the peak table; pass --peak-tflops")
    s = Settings(**{**asdict(s), "peak_tflops": peak})
    log(f"device {name}: {peak_note}")
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    samplers, update, comparison = bench_model_sections(s)
    fsdp = None if "fsdp" in s.skip else bench_fsdp_step(s)
    memory = ("process peak resident memory (VmHWM), model and interpreter included" if s.dry_run
              else "torch.cuda.max_memory_allocated")
    results = {"device": {"name": name, "peak_tflops": peak, "peak_note": peak_note, "memory_measure": memory,
                          "torch": torch.__version__, "cuda": torch.version.cuda},
               "settings": asdict(s), "plan": plan, "samplers": samplers, "lora_update": update,
               "update_per_rollout_batch": comparison, "fsdp_step": fsdp}
    ratio, at = headline_ratio(samplers)
    results["result"] = {"fast_vs_block_tokens_per_s": ratio, "at_batch_length": at,
                         "dmpo_lora_update_s": update["seconds"] if update and update["status"] == "ok" else None,
                         "mfu_update": update["mfu"] if update and update["status"] == "ok" else None,
                         "dmpo_vs_diffu_grpo_update_time": update_time_ratio(comparison)}
    print("\n" + report(results) + "\n", flush=True)
    out = args.out or (Path(tempfile.gettempdir()) / "ddrl_gpu_dry_run.json" if s.dry_run else Path("docs/figures/gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    log(f"wrote {out} ({time.perf_counter() - start:.0f} s in all)")
    print(result_line(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
