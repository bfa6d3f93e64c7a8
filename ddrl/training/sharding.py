"""Sharded training with FSDP2 (``train.sharding: fsdp2``; docs/training-llms.md).

``torch.distributed.fsdp.fully_shard`` is applied to each of the policy's shard units (its decoder
blocks, ``MaskedDiffusionPolicy.shard_units``) and then to the policy itself, so every process holds
1/N of the parameters, gradients and optimizer state; a unit's full parameters exist only while it
runs. It works on GPUs (NCCL) and on CPUs (gloo), which is how it is tested. accelerate still
starts the processes and gathers metrics, but does not wrap the model (its FSDP plugin ignores CPU
runs, and one code path for both is the one that is tested).

Three things differ from unsharded training:

* **Rollouts and evaluation** call the model a data-dependent number of times (samplers that stop
  early, evaluation on the main process only), while a sharded forward is a collective that every
  process must join. ``gathered`` therefore all-gathers the full parameters once (one collective),
  keeps them through any number of forwards, and frees them afterwards: generation costs the
  unsharded model's memory, the update does not.
* **Checkpoints** are sharded (``torch.distributed.checkpoint``; each process writes its shards of
  the trainable parameters and the optimizer state; the frozen base of a LoRA run is not written,
  it comes from the model's path); ``load_sharded`` restores them exactly, onto any number of
  processes.
* **Export**: ``full_state_dict`` gathers the trainable weights to the main process, which writes
  the usual safetensors directory (``final/``) through an unsharded twin of the policy.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from ddrl.models.base import MaskedDiffusionPolicy

SHARDED_DIR = "sharded"
_FORWARD_METHODS = ("forward_cache", "forward_window")


def shard(policy: MaskedDiffusionPolicy, bf16: bool = False) -> None:
    """Shard ``policy`` in place over the default process group: each shard unit, then the rest.

    With ``bf16`` the sharded parameters stay as they are (float32 master weights where they are
    float32) and are all-gathered and computed in bfloat16; gradients are reduced in float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for unit in policy.shard_units():
        fully_shard(unit, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    for name in _FORWARD_METHODS:  # the KV-cache entry points unshard the root like forward does
        if getattr(type(policy), name) is not getattr(MaskedDiffusionPolicy, name):
            register_fsdp_forward_method(policy, name)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def owns_parameters(module: nn.Module) -> bool:
    """Whether ``module`` holds parameters (a frozen copy) rather than viewing another's (LoRA)."""
    return next(module.parameters(), None) is not None


def _fsdp_modules(modules: Iterable[nn.Module | None]) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for root in modules if root is not None for m in root.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(*modules: nn.Module | None) -> Iterator[None]:
    """Within the block the sharded ``modules`` hold their full parameters and forwards issue no
    collective, so any process may call them any number of times. Every process must enter."""
    found = _fsdp_modules(modules)
    for m in found:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in found:
            m.reshard()
            m.set_reshard_after_forward(True)


@contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce-scatter gradients in this block's backward passes (``enabled``) or keep accumulating
    them unreduced (a micro-batch that is not the last of an optimizer step)."""
    if enabled or not is_sharded(module):
        yield
        return
    module.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)  # type: ignore[operator]


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Clip the (sharded) gradients to a global norm of ``max_norm``; the norm before clipping as a
    plain tensor, equal on every process."""
    grads = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


def _options(full: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full)


def save_sharded(path: Path, policy: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every process writes its shards of the trainable weights and optimizer state under
    ``path/sharded`` (``path`` on a filesystem all processes share)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(policy, optimizer, options=_options())
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(Path(path) / SHARDED_DIR))


def load_sharded(path: Path, policy: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore what ``save_sharded`` wrote into the sharded ``policy`` and its ``optimizer``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(policy, optimizer, options=_options())
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(Path(path) / SHARDED_DIR))
    set_state_dict(policy, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=_options())


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def full_state_dict(policy: nn.Module) -> dict[str, Tensor]:
    """The trainable weights, unsharded, on the CPU of the main process (empty elsewhere). A
    collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(policy, options=_options(full=True))


def export(policy: nn.Module, twin: MaskedDiffusionPolicy | None, path: Path) -> None:
    """Write ``policy``'s weights as ``twin.save_pretrained(path)`` would for an unsharded run.

    ``twin``: on the main process an unsharded policy built like ``policy`` (its frozen weights
    are the same, the trainable ones are overwritten); ``None`` on the others. Every process calls.
    """
    trained = full_state_dict(policy)
    if twin is None:
        return
    missing = [k for k in trained if k not in twin.state_dict()]
    if missing:
        raise RuntimeError(f"the unsharded twin lacks {missing[:3]}: it was not built like the trained policy")
    twin.load_state_dict(trained, strict=False)
    twin.save_pretrained(path)
