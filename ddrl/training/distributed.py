"""Processes: an accelerate setup that cannot silently train unsynchronised (docs/training-llms.md).

Two traps on machines without GPUs, both checked at start-up:

* ``accelerate launch --cpu --num_processes 2`` starts ONE process (the simple launcher) yet sets
  MASTER_ADDR/MASTER_PORT as for a multi-process run;
* processes started by ``torchrun`` or ``accelerate launch --multi_gpu`` each see a world of one
  unless the Accelerator is told to use the CPU (then it joins them with gloo).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from ddrl.models.base import MaskedDiffusionPolicy, suppress_token


class LaunchError(RuntimeError):
    """The processes that run are not the processes that were launched."""


def make_accelerator(bf16: bool = False, expected_processes: int | None = None) -> Any:
    """An Accelerator that uses gloo on CPU, checked against how the run was launched."""
    from accelerate import Accelerator

    cpu = not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")
    check_world_size(accelerator.num_processes, expected_processes, os.environ)
    return accelerator


def check_world_size(seen: int, expected: int | None, env: Any) -> None:
    """Fail loudly when the world size this process sees differs from the launch."""
    launched = env.get("WORLD_SIZE")
    if launched is not None and int(launched) != seen:
        raise LaunchError(
            f"launched with WORLD_SIZE={launched} but this process sees {seen}: the processes would "
            "train unsynchronised. Launch with `torchrun --nproc_per_node N` or "
            "`accelerate launch --multi_gpu --num_processes N`."
        )
    if launched is None and seen == 1 and env.get("MASTER_PORT") and env.get("ACCELERATE_USE_CPU", "").lower() == "true":
        raise LaunchError(
            "`accelerate launch --cpu --num_processes N` runs a single process. For N CPU processes use "
            "`accelerate launch --multi_gpu --num_processes N ...` or `torchrun --nproc_per_node N ...`."
        )
    if expected is not None and expected != seen:
        raise LaunchError(f"expected {expected} processes (train.num_processes) but {seen} are running")


def sharding_enabled(configured: str, num_processes: int, env: Any, console: Any = None) -> bool:
    """Whether this run shards the policy with FSDP2: ``train.sharding: fsdp2``, or a launch through
    an accelerate FSDP config (``fsdp_version: 2``); on one process there is nothing to shard."""
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise LaunchError(
            "DeepSpeed is not supported: ddrl's trainer does not prepare DeepSpeed engines. Shard with "
            "train.sharding=fsdp2 (the counterpart of ZeRO-3) or launch plain data parallel (ZeRO-0); "
            "see docs/training-llms.md"
        )
    wanted = configured == "fsdp2"
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        version = env.get("FSDP_VERSION", "1")
        if version != "2":
            raise LaunchError(
                f"the accelerate config asks for FSDP version {version}; ddrl shards with FSDP2: set "
                "fsdp_version: 2 (e.g. configs/accelerate/fsdp2_8gpu.yaml) or train.sharding=fsdp2"
            )
        wanted = True
    if wanted and num_processes == 1:
        if console is not None:
            console.print("[yellow]train.sharding=fsdp2 with one process: nothing to shard, training unsharded[/yellow]")
        return False
    return wanted


class TrainedPolicy:
    """The policy being trained, seen through its distributed wrapper.

    ``logits`` calls the wrapper's forward (so DDP/FSDP hooks synchronise gradients); every
    other attribute is the underlying policy's.
    """

    def __init__(self, wrapped: torch.nn.Module, policy: MaskedDiffusionPolicy) -> None:
        self._wrapped = wrapped
        self._policy = policy

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return suppress_token(self._wrapped(input_ids, attention_mask), self._policy.mask_token_id)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, **scoring: Any) -> Tensor:
        return self._wrapped(input_ids, attention_mask, **scoring)

    def target_logprobs(self, input_ids: Tensor, attention_mask: Tensor | None, scored: Tensor, targets: Tensor) -> Tensor:
        """``MaskedDiffusionPolicy.target_logprobs`` through the wrapper's forward."""
        if self._policy.supports_lean_scoring:
            return self._wrapped(input_ids, attention_mask, scored=scored, targets=targets)
        return type(self._policy).target_logprobs(self, input_ids, attention_mask, scored, targets)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)
