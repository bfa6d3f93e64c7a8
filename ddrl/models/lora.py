"""LoRA adapters through peft, on any ``nn.Module`` (peft's ``inject_adapter_in_model``).

Three operations a policy needs: inject adapters (only they train), switch them off for a while
(the RL reference = the same network without adapters, no second copy in memory), and produce
the merged weights ``W + (alpha / r) * B @ A`` under the original parameter names for saving.
peft is an optional dependency (``pip install 'ddrl[lora]'``), imported only when LoRA is used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

ADAPTER_WEIGHTS = "ddrl_lora.safetensors"
ADAPTER_CONFIG = "ddrl_lora.json"


class LoraSettings(BaseModel):
    """The ``model.lora`` section. Defaults are DMPO's published setting (r=128, alpha=64,
    dropout 0.05); ``target_modules: null`` takes the model's published target list."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(128, ge=1, description="rank of the adapters")
    alpha: float = Field(64.0, gt=0, description="lora_alpha; the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | None = Field(
        None, description="names of the linear layers to adapt; null = the model's published targets"
    )


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'ddrl[lora]' (or pip install peft)") from None
    return peft


def apply_lora(module: nn.Module, settings: LoraSettings, targets: Sequence[str]) -> None:
    """Inject adapters into every linear layer whose name ends with one of ``targets``; freeze
    everything else in ``module``. Adapters are float32 whatever the base dtype."""
    peft = _peft()
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(targets), bias="none",
    )
    try:
        peft.inject_adapter_in_model(config, module)
    except ValueError as err:
        raise ValueError(f"LoRA target_modules {list(targets)} match no layer of the model: {err}") from None
    for name, param in module.named_parameters():
        is_adapter = "lora_" in name
        param.requires_grad_(is_adapter)
        if is_adapter and param.is_floating_point():
            # float32 adapters on a bfloat16 base (as peft's get_peft_model does): small optimizer
            # updates are not rounded away; peft casts the adapters' input and output itself
            param.data = param.data.float()


def lora_layers(module: nn.Module) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every peft adapter layer inside ``module``."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as if it had no adapters; restores them (and their requires_grad) on exit."""
    layers = lora_layers(module)
    if not layers:
        raise ValueError("the model has no LoRA adapters to disable (set model.lora to use LoRA)")
    trainable = {id(p): p.requires_grad for _, layer in layers for p in layer.parameters()}
    for _, layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for _, layer in layers:
            layer.enable_adapters(True)
            for p in layer.parameters():
                p.requires_grad_(trainable[id(p)])


def merged_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with every adapted linear layer's weight replaced by the merged
    ``W + delta`` under its original name (``...q_proj.weight``); adapter tensors dropped.
    The module itself is not modified."""
    state = module.state_dict()
    merged: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        merged[key.replace(".base_layer.", ".")] = value
    for name, layer in lora_layers(module):
        base = layer.get_base_layer()
        weight = base.weight.detach()
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A and adapter not in layer.merged_adapters:
                weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        merged[f"{name}.weight"] = weight
    return merged


def save_adapters(module: nn.Module, settings: LoraSettings, targets: Sequence[str], path: Path) -> None:
    """Write the adapter tensors (``module``'s own names) and the settings next to unmerged
    base weights, so that ``load_adapters`` restores exactly this module (training resumes)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items() if ".lora_" in k}
    save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    payload = {**settings.model_dump(), "target_modules": list(targets)}
    (path / ADAPTER_CONFIG).write_text(json.dumps(payload, indent=2) + "\n")


def load_adapters(module: nn.Module, path: Path) -> LoraSettings | None:
    """Inject and fill the adapters ``save_adapters`` wrote in ``path`` (None when there are none)."""
    if not (path / ADAPTER_CONFIG).is_file():
        return None
    settings = LoraSettings.model_validate_json((path / ADAPTER_CONFIG).read_text())
    apply_lora(module, settings, settings.target_modules or [])
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    expected = {k for k in module.state_dict() if ".lora_" in k}
    if set(tensors) != expected:
        missing, unexpected = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
        raise ValueError(
            f"{path / ADAPTER_WEIGHTS} does not fit {path / ADAPTER_CONFIG}: missing {missing}, unexpected {unexpected}"
        )
    module.load_state_dict(tensors, strict=False)
    return settings
