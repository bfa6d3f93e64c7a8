"""`mlp`: the smallest real masked diffusion model — a per-position MLP that sees the whole canvas.

Position j's logits come from its own token and position embedding, ``h_j = E[x_j] + P[p_j]``, joined
with one context vector the whole row shares, the mean over the real positions of ``gelu(W h_k)``::

    logits_j = MLP([h_j ; mean_k gelu(W h_k)])

so every position sees every other one (which token is where), in both directions, as a masked
diffusion model must: nothing is causal. It works on token ids only (no tokenizer): ids 0..V-2 are
tokens and V-1 is the mask, the setting of token-level tasks such as `pattern`. Saved as a
directory::

    config.json          {"model_type": "ddrl-example-mlp", "vocab_size": ..., "d_model": ..., ...}
    model.safetensors    the weights (safetensors: loading never runs code, unlike a pickle)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ddrl.config import ComponentConfig
from ddrl.models.base import MaskedDiffusionPolicy

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "ddrl-example-mlp"
SIZES = ("vocab_size", "d_model", "hidden", "max_seq_len")  # what config.json records


class MLPConfig(ComponentConfig):
    """Recipe options of the `mlp` model (the recipe's ``model:`` section)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error naming the field

    name: str = "mlp"
    path: str | None = Field(None, description="a directory written by save_pretrained; null = fresh weights")
    vocab_size: int = Field(5, ge=2, description="V: tokens 0..V-2 plus the mask V-1 (5 fits `pattern`)")
    d_model: int = Field(32, ge=1, description="width of the embeddings and of the context vector")
    hidden: int = Field(64, ge=1, description="hidden width of the per-position MLP")
    max_seq_len: int = Field(64, ge=1, description="longest prompt + completion (one embedding per position)")
    seed: int = Field(0, description="initialisation seed for fresh weights")


class MLPPolicy(MaskedDiffusionPolicy):
    """The `mlp` policy: embeddings, a mean-pooled context vector and a per-position MLP."""

    Config = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = None  # token ids only: tasks such as `pattern` encode and decode ids themselves
        v, d = config.vocab_size, config.d_model
        self.embed_tokens = nn.Embedding(v, d)
        self.embed_positions = nn.Embedding(config.max_seq_len, d)
        self.context = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(2 * d, config.hidden), nn.GELU(), nn.Linear(config.hidden, v))

    # -- the contract -------------------------------------------------------------------------
    @property
    def mask_token_id(self) -> int:
        return self.config.vocab_size - 1

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_sequence_length(self) -> int:
        """Read by ddrl's preflight: a run whose prompt + completion is longer stops before training."""
        return self.config.max_seq_len

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Raw logits ``[B, T, V]``; position j predicts token j. Left padding (``attention_mask``
        False) is left out of the context and of the position count, so it changes nothing."""
        b, t = input_ids.shape
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len {self.config.max_seq_len}")
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)  # counted from each row's first real token
        h = self.embed_tokens(input_ids) + self.embed_positions(positions)  # (B, T, D)
        keep = real.unsqueeze(-1).to(h.dtype)  # (B, T, 1): 0 at padding
        pooled = (F.gelu(self.context(h)) * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        return self.mlp(torch.cat([h, pooled.expand_as(h)], dim=-1))  # the base class suppresses the mask

    # -- building and persistence ---------------------------------------------------------------
    @classmethod
    def from_config(cls, config: MLPConfig) -> MLPPolicy:  # type: ignore[override]
        if config.path is not None:
            return cls.from_pretrained(config.path)
        policy = cls(config)
        generator = torch.Generator().manual_seed(config.seed)  # the same seed, the same weights
        with torch.no_grad():
            for name, p in policy.named_parameters():
                p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.randn(p.shape, generator=generator) * 0.02)
        return policy

    @classmethod
    def effective_config(cls, config: MLPConfig) -> MLPConfig:
        """The options as loaded: with ``path``, the sizes in its config.json (what the run's
        config.yaml records); unchanged without a path or when it cannot be read (building says why)."""
        if config.path is None:
            return config
        try:
            return config.model_copy(update=_read_sizes(Path(config.path)))
        except (OSError, ValueError):
            return config

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sizes = {key: getattr(self.config, key) for key in SIZES}
        (path / CONFIG_FILE).write_text(json.dumps({"model_type": MODEL_TYPE, **sizes}, indent=1) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> MLPPolicy:
        path = Path(path)
        policy = cls(MLPConfig(**_read_sizes(path)))
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path / WEIGHTS_FILE} is missing: save the model again")
        policy.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)  # names and shapes must match
        return policy


def _read_sizes(path: Path) -> dict[str, int]:
    """The sizes recorded in ``path/config.json``, each problem named by file."""
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: {path} is not a directory written by MLPPolicy.save_pretrained")
    payload = json.loads(file.read_text())
    if payload.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{file} is not an `mlp` config (model_type {payload.get('model_type')!r}, not {MODEL_TYPE!r})")
    missing = [key for key in SIZES if key not in payload]
    if missing:
        raise ValueError(f"{file} lacks {', '.join(missing)}")
    return {key: int(payload[key]) for key in SIZES}
