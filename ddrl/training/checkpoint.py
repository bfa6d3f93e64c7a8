"""Checkpoints: written atomically, loaded without unpickling anything untrusted.

Layout of ``RUN_DIR/checkpoints/step-000040/``::

    policy/              the policy's save_pretrained directory (safetensors; loadable on its own)
    sharded/             instead of policy/ in a sharded run (train.sharding: fsdp2): every process's
                         shards of the trainable weights and optimizer state (torch.distributed.checkpoint)
    optimizer.pt         optimizer state (tensors and numbers only; loaded with weights_only=True; not
                         in a sharded checkpoint, whose sharded/ holds it)
    trainer_state.json   step, scheduler state, counters
    rng.safetensors      torch's global RNG state (ddrl's own draws are keyed by step, not by it)

A checkpoint directory is first written as ``step-000040.tmp`` and renamed when complete, so a
killed process leaves either a whole checkpoint or none.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.training import sharding

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy: MaskedDiffusionPolicy,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int | None = None,
    objective: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the checkpoint of ``step``; keep only the ``keep`` newest ones. ``objective``: every
    process's ``Objective.state_dict()`` (rank order), kept in ``objective.safetensors``."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    policy.save_resumable(tmp / "policy")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    _save_objective(tmp, objective)
    _complete(run_dir, tmp, final, step, state, keep)
    return final


OBJECTIVE_FILE = "objective.safetensors"


def _save_objective(tmp: Path, per_process: list[dict[str, torch.Tensor]] | None) -> None:
    flat = {f"p{rank}/{name}": t.detach().cpu().contiguous()
            for rank, tensors in enumerate(per_process or []) for name, t in tensors.items()}
    if flat:
        save_file(flat, str(tmp / OBJECTIVE_FILE))


def load_objective_state(path: Path, process_index: int) -> dict[str, torch.Tensor] | None:
    """This process's ``Objective.state_dict()`` from checkpoint ``path``: {} when the checkpoint
    holds none, None when it holds states of other processes only (written by another number of
    processes)."""
    file = Path(path) / OBJECTIVE_FILE
    if not file.is_file():
        return {}
    tensors = load_file(str(file))
    prefix = f"p{process_index}/"
    mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return mine if mine or not tensors else None


def _complete(run_dir: Path, tmp: Path, final: Path, step: int, state: dict[str, Any], keep: int | None) -> None:
    """Write the RNG and trainer state into ``tmp``, rename it to ``final`` (replacing an older one),
    and keep only the ``keep`` newest checkpoints."""
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    payload = {"step": step, "python_random": _jsonable(random.getstate()), **state}
    (tmp / "trainer_state.json").write_text(json.dumps(payload, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)


def save_sharded_checkpoint(
    run_dir: Path,
    step: int,
    policy: MaskedDiffusionPolicy,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    is_main: bool,
    barrier: Callable[[], None],
    keep: int | None = None,
    objective: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """``save_checkpoint`` for a sharded policy: every process calls it and writes its shards."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    sharding.save_sharded(tmp, policy, optimizer)
    barrier()
    if is_main:
        _save_objective(tmp, objective)
        _complete(run_dir, tmp, final, step, {"sharded": True, **state}, keep)
    barrier()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, policy: MaskedDiffusionPolicy, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from ``path``; return the trainer state."""
    if sharding.is_sharded_checkpoint(path) != sharding.is_sharded(policy):
        written = "a sharded" if sharding.is_sharded_checkpoint(path) else "an unsharded"
        raise ValueError(
            f"checkpoint {path} was written by {written} run: resume it with the same train.sharding "
            "(a sharded checkpoint resumes on any number of processes)"
        )
    if sharding.is_sharded(policy):
        sharding.load_sharded(Path(path), policy, optimizer)
    else:
        weights = Path(path) / "policy"
        state_dict = _policy_state(weights, policy)
        missing, unexpected = policy.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit the policy: missing {missing}, unexpected {unexpected}")
        optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", weights_only=True, map_location="cpu"))
    torch.set_rng_state(load_file(str(Path(path) / "rng.safetensors"))["torch_rng"])
    state = json.loads((Path(path) / "trainer_state.json").read_text())
    random.setstate(_tuplify(state.pop("python_random")))
    state.pop("sharded", None)
    return state


def _policy_state(weights_dir: Path, policy: MaskedDiffusionPolicy) -> dict[str, torch.Tensor]:
    """The policy's state dict read back through its own ``from_pretrained``."""
    loaded = type(policy).from_pretrained(weights_dir)
    return loaded.state_dict()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
