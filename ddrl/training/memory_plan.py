"""The memory plan of a run, per process, before anything is loaded (``ddrl train --dry-run``).

Counts come from the policy's skeleton (``MaskedDiffusionPolicy.skeleton``: the parameters' shapes,
dtypes and which of them train, without reading weights); sizes follow from the recipe:

* weights, the frozen reference (a copy for full fine-tuning, nothing with LoRA), gradients and
  AdamW's two moments (in the dtype of each trained parameter), divided over the processes with
  ``train.sharding: fsdp2``; a sharded run gathers the full weights during rollouts;
* the activations of one loss micro-batch: tokens per forward x layers x saved bytes per token and
  layer (``ACTIVATION_WIDTHS`` values of the hidden and MLP widths); with gradient checkpointing, one
  hidden state per layer plus one layer's activations;
* the LM head: lean scoring holds a 2^24-logit float32 chunk (and its recomputation), naive scoring
  ``[views, tokens, V]`` float32 logits and their log-softmax.

An estimate, checked against measured peaks in docs/benchmarks.md (memory benchmark): it is meant
to say which setting to change, not to predict the last gigabyte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ddrl.models.head import CHUNK_ELEMENTS

GIB = 2**30
# saved activations per token and layer, in multiples of (d_model, mlp_hidden) elements (block input,
# norms, q/k/v before and after rotary, attention output; gate, up, act(gate), their product, and
# the backward's transient buffers), plus the float32 copies a bfloat16 model's RMSNorms make, in
# d_model elements: float32 655 KB, bfloat16 426 KB per layer and token at LLaDA-8B's width. About
# twice the live activations benchmarks/memory.py measures there (CPU, LoRA; float32 300 KB with
# 4-view micro-batches, 275 KB in one graph, bfloat16 230 KB): a margin for a GPU allocator's slack.
ACTIVATION_WIDTHS = (16, 8)
NORM_UPCAST_WIDTH = 6


@dataclass(frozen=True)
class Shape:
    """What the plan needs to know about a policy."""

    parameters: int
    trained: int
    weight_bytes: int  # all parameters, in their dtypes
    trained_bytes: int  # trained parameters, in their dtypes
    layers: int
    d_model: int
    mlp_hidden: int
    vocab: int

    @classmethod
    def of(cls, policy: nn.Module, layers: int, d_model: int, mlp_hidden: int, vocab: int) -> Shape:
        params = {id(p): p for p in policy.parameters()}.values()  # tied weights once
        trained = [p for p in params if p.requires_grad]
        return cls(
            sum(p.numel() for p in params), sum(p.numel() for p in trained),
            sum(p.numel() * p.element_size() for p in params), sum(p.numel() * p.element_size() for p in trained),
            layers, d_model, mlp_hidden, vocab,
        )


@dataclass(frozen=True)
class Line:
    item: str
    gib: float
    note: str
    phase: str = "both"  # held through the whole run (both), or only in the update / the rollouts


def plan(shape: Shape, cfg: Any, processes: int, sharded: bool, reference_copy: bool) -> list[Line]:
    """Lines of the plan for one process of the run ``cfg`` (a resolved ``RunConfig``)."""
    tc = cfg.train
    split = processes if sharded else 1
    act_bytes = 2 if (tc.bf16 or shape.weight_bytes < 3 * shape.parameters) else 4
    lines = [Line("weights", shape.weight_bytes / split / GIB, f"{shape.parameters / 1e9:.2f} B parameters"
                  + (f", sharded over {split}" if sharded else ""))]
    if reference_copy:
        lines.append(Line("reference copy", shape.weight_bytes / split / GIB, "full fine-tuning: a frozen copy"))
    lines.append(Line("gradients", shape.trained_bytes / split / GIB, f"{shape.trained / 1e6:.1f} M trained parameters", "update"))
    lines.append(Line("AdamW moments", 2 * shape.trained_bytes / split / GIB, "two per trained parameter"))

    replicates = int(getattr(cfg.objective, "loss_replicates", 1) or 1)
    views = tc.loss_micro_batch_size or tc.per_device_train_batch_size * replicates
    tokens = views * ((tc.max_prompt_length or 256) + int(cfg.sampler.max_completion_length))
    per_token_layer = act_bytes * (ACTIVATION_WIDTHS[0] * shape.d_model + ACTIVATION_WIDTHS[1] * shape.mlp_hidden)
    if act_bytes < 4:
        per_token_layer += 4 * NORM_UPCAST_WIDTH * shape.d_model
    if tc.gradient_checkpointing:
        activations = tokens * (shape.layers * act_bytes * shape.d_model + per_token_layer)
        how = "gradient checkpointing: one hidden state per layer + one layer"
    else:
        activations = tokens * shape.layers * per_token_layer
        how = "every layer's activations (train.gradient_checkpointing: false)"
    lines.append(Line("activations (loss)", activations / GIB,
                      f"{views} views x {tokens // views} tokens (prompt: train.max_prompt_length, else 256); {how}", "update"))
    lines.append(Line("LM head (lean)", 3 * 4 * CHUNK_ELEMENTS / GIB, "float32 chunks of 2^24 logits", "update"))
    if sharded:
        gathered = shape.weight_bytes * (1 - 1 / split) * (2 if reference_copy else 1)
        lines.append(Line("gathered for rollouts", gathered / GIB, "the full weights while generating", "rollout"))
    for phase in ("update", "rollout"):
        total = sum(line.gib for line in lines if line.phase in ("both", phase))
        lines.append(Line(f"peak during {phase}s", total, "estimate per process; CUDA context, fragmentation"
                          + (" and the sampler's logits / KV cache" if phase == "rollout" else "") + " not included", "total"))
    return lines


def render(lines: list[Line]) -> str:
    width = max(len(line.item) for line in lines)
    return "\n".join(f"{line.item:<{width}}  {line.gib:8.2f} GiB  {line.note}" for line in lines)


def architecture(policy: Any) -> tuple[int, int, int, int]:
    """(layers, d_model, mlp_hidden, vocab) of a built or skeleton policy, read from its modules."""
    units = policy.shard_units()
    layers = len(units) or 1
    embedding = next(m for m in policy.modules() if isinstance(m, nn.Embedding))
    d_model = embedding.embedding_dim
    linears = [m for m in (units[0] if units else policy).modules() if isinstance(m, nn.Linear)]
    mlp_hidden = max((m.out_features for m in linears), default=d_model)
    return layers, d_model, mlp_hidden, int(policy.vocab_size)


def skeleton_shape(policy: Any) -> Shape:
    return Shape.of(policy, *architecture(policy))


def plan_run(cfg: Any, registry: Any, env: Any) -> tuple[list[Line], str]:
    """The plan of the resolved run ``cfg`` on the processes the launch describes (``WORLD_SIZE``,
    else ``train.num_processes``, else 1), and a heading naming them."""
    from ddrl.training.distributed import sharding_enabled
    from ddrl.training.sharding import owns_parameters

    processes = int(env.get("WORLD_SIZE") or cfg.train.num_processes or 1)
    sharded = sharding_enabled(cfg.train.sharding, processes, env)
    policy = registry.get("models", cfg.model.name).skeleton(cfg.model)
    objective = registry.build("objectives", cfg.objective)
    copy = bool(objective.needs_reference) and owns_parameters(policy.frozen_reference())
    heading = (f"memory plan per process: {cfg.model.name}, {processes} process(es), "
               f"{'sharded (fsdp2)' if sharded else 'unsharded'}, objective {cfg.objective.name}")
    return plan(skeleton_shape(policy), cfg, processes, sharded, copy), heading
