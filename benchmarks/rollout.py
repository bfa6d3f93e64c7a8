"""Rollout speed and fidelity of `fast` (Fast-dLLM: KV cache + confidence threshold) against `block`.

Everything is measured side by side in one run, on the same model, prompts and thread count:

* **speed** on a LLaDA-shaped model sized for a CPU: LLaDA's block (RoPE, RMSNorm, SwiGLU, no
  biases, bidirectional), LLaDA's vocabulary of 126464 tokens, a few narrow layers, random weights
  (speed does not depend on the weights). It is ``ddrl.models.llada`` when that model can be built
  from a config, else a token-only `tiny` of that shape (the output says which). Generation
  lengths 128/256/512, block 32, steps = length, greedy; tokens/s, NFE (a window pass counts as
  one) and full-canvas-equivalent passes of `block` and of `fast` with a prefix or dual cache,
  each with and without threshold 0.9;
* **agreement**: the fraction of completion tokens each `fast` variant shares with `block`;
* **accuracy** on the shipped tiny Countdown model (``builtin:countdown``, toy variant, operators
  "+-", the 256 held-out puzzles, greedy): fast(dual, 0.9) minus block, in points.

Random weights spread their probability over 126k tokens (no confidence comes near 0.9), so on the
LLaDA-shaped model the threshold never fires and the speed-up there is the cache's alone; the
threshold's effect shows in the NFE of the trained Countdown model.

    python benchmarks/rollout.py            # all lengths and variants (~40 min of one core's time)
    python benchmarks/rollout.py --quick    # the L = 256 headline: block vs fast(dual, 0.9) (~3 min)
    python benchmarks/rollout.py --lengths 128 --batch 2

The last line is machine-readable:
``result: speedup=… token_agreement=… accuracy_delta=… countdown_token_agreement=…``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any

import torch
from torch import Tensor, nn

from ddrl.batch import left_pad
from ddrl.generation import encode_prompts
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.models.tiny import TinyArchitecture, TinyConfig, TinyPolicy
from ddrl.registry import Registry
from ddrl.samplers.base import Sampler, SampleOutput
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig
from ddrl.samplers.fast import FastSampler, FastSamplerConfig

LLADA_VOCAB = 126464
LLADA_MASK_ID = 126336
LLADA_ROPE_THETA = 500000.0  # LLaDA-8B's config.json
HEADLINE = "fast dual 0.9"


def llada_shaped(args: argparse.Namespace) -> tuple[MaskedDiffusionPolicy, str]:
    """The speed model: native ``llada`` when it builds from a config here, else a `tiny` of that shape."""
    policy, why_not = native_llada(args)
    if policy is not None:
        return policy, (f"ddrl.models.llada, random weights ({_size(policy)}: d_model {args.d_model}, "
                        f"{args.layers} layers, {args.heads} heads, SwiGLU {3 * args.d_model}, vocab {LLADA_VOCAB})")
    arch = TinyArchitecture(vocab_size=LLADA_VOCAB, d_model=args.d_model, n_layers=args.layers,
                            n_heads=args.heads, ffn_hidden=3 * args.d_model, max_seq_len=args.prompt + 520,
                            rope_theta=LLADA_ROPE_THETA)
    policy = TinyPolicy.fresh(arch, None, seed=0).eval()
    return policy, (f"{why_not}; token-only `tiny` with LLaDA's block and vocabulary instead ({_size(policy)}: "
                    f"d_model {args.d_model}, {args.layers} layers, {args.heads} heads, SwiGLU {3 * args.d_model}, "
                    f"vocab {LLADA_VOCAB})")


def native_llada(args: argparse.Namespace) -> tuple[MaskedDiffusionPolicy | None, str]:
    """``ddrl.models.llada`` with random weights, built from a published-style config.json dict
    (the loader's own config translation, weights initialised instead of loaded); else (None, why)."""
    if importlib.util.find_spec("ddrl.models.llada") is None:
        return None, "ddrl.models.llada does not exist"
    try:
        from ddrl.models.llada import LLaDAPolicy

        d = args.d_model
        published = {"model_type": "llada", "d_model": d, "n_heads": args.heads, "n_kv_heads": args.heads,
                     "n_layers": args.layers, "mlp_hidden_size": 3 * d, "vocab_size": LLADA_VOCAB,
                     "embedding_size": LLADA_VOCAB, "max_sequence_length": args.prompt + 520,
                     "rope_theta": LLADA_ROPE_THETA, "mask_token_id": LLADA_MASK_ID, "weight_tying": False}
        hf_config = LLaDAPolicy.hf_config(published)
        hf_config._attn_implementation = "sdpa"
        hf_config.is_causal, hf_config.use_cache = False, False
        torch.manual_seed(0)
        model = LLaDAPolicy.base_model_class()(hf_config)
        for module in model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False  # bidirectional, as the loader sets it
        policy = LLaDAPolicy(model, nn.Linear(d, LLADA_VOCAB, bias=False), published, None, LLADA_MASK_ID).eval()
        probe = torch.randint(1000, (1, 6))
        changed = probe.clone()
        changed[0, -1] += 1
        with torch.inference_mode():
            if torch.allclose(policy(probe)[0, 0], policy(changed)[0, 0]):
                return None, "ddrl.models.llada built here attends causally (the last token does not reach the first)"
        return policy, ""
    except Exception as err:  # noqa: BLE001 - a model still in the making must not stop the benchmark
        return None, f"ddrl.models.llada could not be built from a config ({type(err).__name__}: {err})"


def _size(policy: MaskedDiffusionPolicy) -> str:
    return f"{sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters"


def random_prompts(policy: MaskedDiffusionPolicy, batch: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """``batch`` prompts of random tokens (never the mask), ``length`` tokens down to ``length/2``
    (one prompt: ``length``), left-padded."""
    g = torch.Generator().manual_seed(seed)
    mask_id = policy.mask_token_id
    lengths = [length - (length // 2) * i // max(batch - 1, 1) for i in range(batch)]
    rows = []
    for n in lengths:
        ids = torch.randint(policy.vocab_size - 1, (n,), generator=g)
        rows.append((ids + (ids >= mask_id).long()).tolist())  # skip the mask id
    return left_pad(rows, 0)


def variants(length: int, block: int, quick: bool) -> dict[str, Sampler]:
    common = dict(max_completion_length=length, block_length=block, steps=length)
    out: dict[str, Sampler] = {"block": BlockSampler(BlockSamplerConfig(**common))}
    caches = ["dual"] if quick else ["prefix", "dual"]
    for cache in caches:
        for threshold in ([0.9] if quick else [None, 0.9]):
            name = f"fast {cache}" + ("" if threshold is None else f" {threshold}")
            out[name] = FastSampler(FastSamplerConfig(cache=cache, threshold=threshold, **common))
    return out


def timed(sampler: Sampler, policy: MaskedDiffusionPolicy, ids: Tensor, mask: Tensor) -> tuple[SampleOutput, float]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = sampler.sample(policy, ids, mask, generator=torch.Generator().manual_seed(0))
    return out, time.perf_counter() - start


def agreement(a: Tensor, b: Tensor) -> float:
    return (a == b).double().mean().item()


def speed(policy: MaskedDiffusionPolicy, args: argparse.Namespace, lengths: list[int]) -> dict[int, dict[str, Any]]:
    """Per length and variant: tokens/s, NFE, full passes, speed-up and agreement with `block`."""
    ids, mask = random_prompts(policy, args.batch, args.prompt, seed=1)
    timed(variants(32, 32, True)["block"], policy, ids[:, -8:], mask[:, -8:])  # warm-up (allocator, kernels)
    table: dict[int, dict[str, Any]] = {}
    for length in lengths:
        rows: dict[str, Any] = {}
        for name, sampler in variants(length, args.block, args.quick).items():
            out, seconds = timed(sampler, policy, ids, mask)
            passes = getattr(out, "full_passes", float(out.nfe))
            rows[name] = dict(out=out, seconds=seconds, tok_s=out.completion_ids.numel() / seconds,
                              nfe=out.nfe, passes=passes)
            base = rows["block"]
            rows[name]["speedup"] = rows[name]["tok_s"] / base["tok_s"]
            rows[name]["agreement"] = agreement(out.completion_ids, base["out"].completion_ids)
            r = rows[name]
            print(f"L={length:4d} {name:>15}: {r['tok_s']:8.1f} tok/s  {r['speedup']:5.2f}x  NFE {r['nfe']:4d}  "
                  f"full passes {r['passes']:6.1f}  agreement {r['agreement']:.3f}  ({seconds:.1f} s)", flush=True)
        table[length] = rows
    return table


def countdown(args: argparse.Namespace, lengths: list[int]) -> dict[int, dict[str, Any]]:
    """Greedy held-out accuracy of `block` and `fast` on the shipped tiny Countdown model."""
    registry = Registry()
    task_cls = registry.get("tasks", "countdown")
    task = task_cls.from_config(task_cls.Config(name="countdown", variant="toy", operators="+-"))
    policy = TinyPolicy.from_config(TinyConfig(path="builtin:countdown")).eval()
    examples = task.split("test")
    prompts = [task.encode(ex, policy) for ex in examples]
    table: dict[int, dict[str, Any]] = {}
    for length in lengths:
        rows: dict[str, Any] = {}
        block = min(length, 8)
        for name, sampler in variants(length, block, args.quick).items():
            completions: list[list[int]] = []
            nfe = 0
            start = time.perf_counter()
            for lo in range(0, len(prompts), 64):
                ids, mask = encode_prompts(policy, prompts[lo : lo + 64])
                with torch.inference_mode():
                    out = sampler.sample(policy, ids, mask)
                completions += out.completion_ids.tolist()
                nfe += out.nfe
            seconds = time.perf_counter() - start
            scores = [task.score(ex, task.decode(c, policy))["accuracy"] for ex, c in zip(examples, completions)]
            rows[name] = dict(ids=torch.tensor(completions), accuracy=100 * sum(scores) / len(scores), nfe=nfe,
                              tok_s=len(completions) * length / seconds)
            r = rows[name]
            r["agreement"] = agreement(r["ids"], rows["block"]["ids"])
            print(f"countdown L={length:2d} block {block} {name:>15}: accuracy {r['accuracy']:5.1f}%  "
                  f"({r['accuracy'] - rows['block']['accuracy']:+.1f})  NFE {nfe:5d}  agreement {r['agreement']:.3f}  "
                  f"{r['tok_s']:7.0f} tok/s", flush=True)
        table[length] = rows
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="L = 256, block vs fast(dual, 0.9) only")
    parser.add_argument("--lengths", type=int, nargs="*", default=None)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="prompts on the LLaDA-shaped model")
    parser.add_argument("--prompt", type=int, default=64, help="longest prompt, in tokens")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=1, help="LLaDA's head size is 128")
    args = parser.parse_args()
    lengths = args.lengths or ([256] if args.quick else [128, 256, 512])
    policy, description = llada_shaped(args)
    print(f"speed model: {description}")
    prompt_span = f"{args.prompt // 2}-{args.prompt}" if args.batch > 1 else str(args.prompt)
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, prompts of {prompt_span} tokens (random ids), "
          f"block {args.block}, steps = length, greedy\n")
    table = speed(policy, args, lengths)
    print()
    tiny_table = countdown(args, [8] if args.quick else [8, 16])
    headline_length = 256 if 256 in table else lengths[0]
    head = table[headline_length][HEADLINE]
    acc = tiny_table[8][HEADLINE]["accuracy"] - tiny_table[8]["block"]["accuracy"]
    print(f"\nheadline (L={headline_length}): fast(dual, 0.9) {head['speedup']:.2f}x block's tokens/s, "
          f"{head['agreement']:.3f} token agreement; countdown accuracy {acc:+.1f} points")
    print(f"result: speedup={head['speedup']:.2f} token_agreement={head['agreement']:.3f} accuracy_delta={acc:.1f} "
          f"countdown_token_agreement={tiny_table[8][HEADLINE]['agreement']:.3f}")


if __name__ == "__main__":
    main()
