"""Optimizer and learning-rate schedule from the train config (TRL's names)."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ddrl.config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the policy has no trainable parameters")
    return torch.optim.AdamW(
        trainable,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    warmup = cfg.warmup_steps
    if cfg.lr_scheduler_type != "constant" and warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if cfg.lr_scheduler_type in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - warmup) / max(1, cfg.max_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if cfg.lr_scheduler_type == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> float:
    """Set the learning rate of optimizer step ``step``; stateless, so a resumed run needs no
    scheduler state."""
    lr = cfg.learning_rate * lr_factor(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
