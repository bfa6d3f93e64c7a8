"""Sampling throughput of the `tiny` policy: tokens/s and NFE of `block` and `ancestral`.

Measured side by side in one run on the same prompts, model and thread count; the default `tiny`
architecture (about 3.3M parameters) with random weights (speed does not depend on the weights).

    python benchmarks/sampling_speed.py                  # L = 64, batch 32
    python benchmarks/sampling_speed.py --length 128 --batch 64

The last line is machine-readable: ``result: block_tok_s=… ancestral_tok_s=… …``.
"""

from __future__ import annotations

import argparse
import time

import torch

from ddrl.generation import encode_prompts
from ddrl.models.tiny import TinyConfig, TinyPolicy
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig


def measure(sampler, policy, ids, mask, repeats: int) -> tuple[float, int]:
    sampler.sample(policy, ids, mask, generator=torch.Generator().manual_seed(0))  # warm-up
    start = time.perf_counter()
    nfe = 0
    for r in range(repeats):
        nfe = sampler.sample(policy, ids, mask, generator=torch.Generator().manual_seed(r)).nfe
    seconds = (time.perf_counter() - start) / repeats
    return ids.shape[0] * sampler.completion_length / seconds, nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    policy = TinyPolicy.from_config(TinyConfig()).eval()
    n_params = sum(p.numel() for p in policy.parameters())
    prompts = [f"{a},{b},{c}:{a * b - c}=" for a, b, c in zip(range(1, 10), range(2, 11), range(3, 12))]
    ids, mask = encode_prompts(policy, (prompts * args.batch)[: args.batch])
    L = args.length
    samplers = {
        f"block (steps={L})": BlockSampler(BlockSamplerConfig(max_completion_length=L, block_length=args.block, steps=L)),
        f"block (steps={L // 2})": BlockSampler(
            BlockSamplerConfig(max_completion_length=L, block_length=args.block, steps=L // 2)
        ),
        "ancestral": AncestralSampler(AncestralSamplerConfig(max_completion_length=L)),
    }
    print(f"tiny: {n_params / 1e6:.2f}M parameters, {torch.get_num_threads()} threads, batch {args.batch}, L={L}")
    results = {}
    for name, sampler in samplers.items():
        tok_s, nfe = measure(sampler, policy, ids, mask, args.repeats)
        results[name] = tok_s
        print(f"{name:>20}: {tok_s:9.0f} tokens/s   NFE {nfe}")
    base = results[f"block (steps={L})"]
    for name, tok_s in results.items():
        print(f"{name:>20}: {tok_s / base:.2f}x block (steps={L})")
    print(
        f"result: block_tok_s={base:.0f} block_half_steps_tok_s={results[f'block (steps={L // 2})']:.0f} "
        f"ancestral_tok_s={results['ancestral']:.0f}"
    )


if __name__ == "__main__":
    main()
