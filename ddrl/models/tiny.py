"""`tiny`: LLaDA's block in miniature, for CPU runs and exact tests.

A bidirectional transformer (no causal mask) with rotary position embeddings, RMSNorm and a SwiGLU
MLP, no biases, untied input/output embeddings, and a character tokenizer. Saved as a directory::

    config.json          {"model_type": "ddrl-tiny", "d_model": ..., "vocab_size": ..., "mask_token_id": ...}
    model.safetensors
    tokenizer.json       the character set (absent for a token-only model)

Without a tokenizer (``charset: null``) the model works on raw token ids 0..V-2 with the mask as
id V-1: the setting of exact enumeration tests and of energy-based targets (Ising/Potts spins).

It supports the `fast` sampler's key/value cache (``forward_cache`` / ``forward_window``; layouts
in ``ddrl.models.cache``).

``architecture.block_size`` (default null: the fully bidirectional model above, unchanged) makes it a
block-diffusion model (LLaDA2.x, SDAR, BD3-LM): the canvas is cut into blocks of ``block_size``
real tokens counted from the first real token (left padding does not count, as for the rotary
positions), prompt included, and a position attends to its own block and every earlier one:
bidirectional inside a block, causal across blocks. The prompt is therefore cut into blocks too
(prompt block j sees prompt blocks <= j), and when the prompt's real length is not a multiple of
``block_size`` its last block is shared with the first completion tokens (LLaDA2's convention).
Such a model has no generic key/value cache paths (``supports_kv_cache`` is False; ``forward_cache`` /
``forward_window`` raise, as the `fast` sampler's column blocks need not be the model's): it has instead
the exact cache of committed blocks (``supports_block_cache``, ``forward_block_cache`` /
``forward_block_window``) that the `block_diffusion` sampler uses; or decode it with ``cache: none``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ddrl.config import ComponentConfig
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.models.cache import KVCache, splice
from ddrl.models.char_tokenizer import DEFAULT_CHARSET, TOKENIZER_FILE, CharTokenizer
from ddrl.models.head import target_logprobs
from ddrl.models.hf import CheckpointError, corrupt_message

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "ddrl-tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TinyArchitecture(BaseModel):
    """Shape of the network (written to config.json)."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(0, ge=0, description="0 = taken from the tokenizer; token-only: V incl. the mask")
    d_model: int = Field(256, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    ffn_hidden: int = Field(704, ge=8)
    max_seq_len: int = Field(1024, ge=8)
    rope_theta: float = Field(10000.0, gt=0)
    absolute_positions: bool = Field(
        False,
        description="also add a learned embedding of each absolute position (max_seq_len of them): for "
        "fixed layouts such as lattice sites, where rotary phases (relative offsets only) cannot tell "
        "which sites neighbour across a row's end",
    )
    norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    block_size: int | None = Field(
        None,
        ge=1,
        description="null = fully bidirectional attention; N = block diffusion: blocks of N real tokens from "
        "the first real token (prompt included), bidirectional inside a block, causal across blocks",
    )


class TinyConfig(ComponentConfig):
    """Recipe options of the `tiny` model."""

    model_config = ConfigDict(extra="forbid")

    name: str = "tiny"
    path: str | None = Field(
        None, description="a saved tiny-model directory, or builtin:NAME for a shipped one; null = fresh weights"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = Field(0, description="initialisation seed for fresh weights")
    charset: str | None = Field(DEFAULT_CHARSET, description="null = token ids only, mask = vocab_size-1")
    architecture: TinyArchitecture = Field(default_factory=TinyArchitecture)


# ------------------------------------------------------------------------------------------------
# the network


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rotary(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin ``[B, 1, T, head_dim/2]`` for integer positions ``[B, T]``."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of each head (the Llama/LLaDA convention)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x)


KVHook = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # window keys/values -> attended ones


class Attention(nn.Module):
    def __init__(self, arch: TinyArchitecture) -> None:
        super().__init__()
        if arch.d_model % arch.n_heads or (arch.d_model // arch.n_heads) % 2:
            raise ValueError("d_model must split into an even head size across n_heads")
        self.n_heads, self.head_dim = arch.n_heads, arch.d_model // arch.n_heads
        self.q_proj = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self.k_proj = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self.v_proj = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self.o_proj = nn.Linear(arch.d_model, arch.d_model, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor | None, kv_hook: KVHook | None = None
    ) -> Tensor:
        """``x [B, S, D]`` -> ``[B, S, D]``; ``kv_hook`` maps this window's rotated keys/values
        ``[B, H, S, hd]`` to the keys/values attended to (``[B, H, T, hd]``, cache spliced in)."""
        b, t, _ = x.shape
        q, k, v = (
            proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, S, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_hook is not None:
            k, v = kv_hook(k, v)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, arch: TinyArchitecture) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(arch.d_model, arch.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(arch.d_model, arch.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(arch.ffn_hidden, arch.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, arch: TinyArchitecture) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.attn = Attention(arch)
        self.mlp_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.mlp = SwiGLU(arch)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor | None, kv_hook: KVHook | None = None
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, key_mask, kv_hook)
        return x + self.mlp(self.mlp_norm(x))


class TinyTransformer(nn.Module):
    def __init__(self, arch: TinyArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.d_model)
        self.embed_positions = nn.Embedding(arch.max_seq_len, arch.d_model) if arch.absolute_positions else None
        self.layers = nn.ModuleList(Block(arch) for _ in range(arch.n_layers))
        self.norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def reset_parameters(self, generator: torch.Generator) -> None:
        std = self.arch.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                # residual output projections scaled down by depth (GPT-2 / nanoGPT)
                s = std / math.sqrt(2 * self.arch.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=generator) * s)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.lm_head(self.hidden(input_ids, attention_mask))

    def hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[B, T, D]`` the final (normalised) hidden states the head reads."""
        b, t = input_ids.shape
        positions, key_mask = self._positions(b, t, attention_mask, input_ids.device)
        cos, sin = rotary(positions, self.arch.d_model // self.arch.n_heads, self.arch.rope_theta)
        x = self._embed(input_ids, positions)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, key_mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, key_mask)
        return self.norm(x)

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Logits ``[B, T, V]`` (equal to ``forward``'s) and every layer's rotated keys/values
        (block-causal for a block-diffusion model)."""
        b, t = input_ids.shape
        positions, key_mask = self._positions(b, t, attention_mask, input_ids.device)
        cos, sin = rotary(positions, self.arch.d_model // self.arch.n_heads, self.arch.rope_theta)
        cache = KVCache([], [])

        def keep(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            cache.keys.append(k)
            cache.values.append(v)
            return k, v

        x = self._embed(input_ids, positions)
        for layer in self.layers:
            x = layer(x, cos, sin, key_mask, keep)
        return self.lm_head(self.norm(x)), cache

    def forward_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None,
        attended: KVCache | None = None,
    ) -> Tensor:
        """Logits ``[B, S, V]`` of canvas positions ``[start, start+S)``; the other positions'
        keys/values come from ``cache`` (prefix layout: ``cache.length == start``, the window runs
        to the end of the canvas; dual layout: ``cache.length == T``). With ``attended``, every
        layer's attended keys/values (the cache with the window's spliced in) are appended to it.
        A block-diffusion model's window queries get their rows of the block-causal mask."""
        b, s = window_ids.shape
        if len(cache.keys) != len(self.layers):
            raise ValueError(f"the cache holds {len(cache.keys)} layers, the model has {len(self.layers)}")
        t = _canvas_length(start, s, cache.length, attention_mask)
        positions, key_mask = self._positions(b, t, attention_mask, window_ids.device)
        positions = positions[:, start : start + s]  # rotary phases of the whole canvas
        if self.arch.block_size is not None:
            key_mask = key_mask[:, :, start : start + s]  # type: ignore[index]  # the window's query rows
        cos, sin = rotary(positions, self.arch.d_model // self.arch.n_heads, self.arch.rope_theta)
        x = self._embed(window_ids, positions)
        for layer, k_cached, v_cached in zip(self.layers, cache.keys, cache.values):
            hook = _splicer(k_cached, v_cached, start, attended)
            x = layer(x, cos, sin, key_mask, hook)
        return self.lm_head(self.norm(x))

    def _refuse_cache(self) -> None:
        if self.arch.block_size is not None:
            raise NotImplementedError(
                f"a block-diffusion tiny model (architecture.block_size={self.arch.block_size}) has no generic "
                "key/value cache paths (the `fast` sampler's column blocks need not match the model's blocks): "
                "decode it with sampler.cache: none, or with the block_diffusion sampler, whose exact cache of "
                "committed blocks uses forward_block_cache / forward_block_window"
            )

    def _embed(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings ``[B, S, D]`` (+ the absolute-position ones of ``positions [B, S]``)."""
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions)
        return x

    def _positions(
        self, b: int, t: int, attention_mask: Tensor | None, device: torch.device
    ) -> tuple[Tensor, Tensor | None]:
        """Rotary positions ``[B, T]`` and the key mask ``[B, 1, 1, T]`` (None = attend everywhere);
        for a block-diffusion model the mask is ``[B, 1, T, T]`` (query by key, True = may attend)."""
        if t > self.arch.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len {self.arch.max_seq_len}")
        if self.arch.block_size is not None:
            return self._block_positions(b, t, attention_mask, device)
        if attention_mask is None or bool(attention_mask.all()):
            return torch.arange(t, device=device).expand(b, t), None
        mask = attention_mask.bool()
        # positions count real tokens only, so left padding does not shift the rotary phase
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, mask[:, None, None, :]  # key mask: True = may be attended to

    def _block_positions(
        self, b: int, t: int, attention_mask: Tensor | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Block diffusion: query i may attend to real key j iff block(j) <= block(i), where
        block = (real-token position) // block_size. Padded queries sit in block 0 with the first
        real token, so no row of the mask is empty."""
        if attention_mask is None:
            mask = torch.ones((b, t), dtype=torch.bool, device=device)
        else:
            mask = attention_mask.bool()
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        block = positions // self.arch.block_size  # (B, T)
        allowed = (block[:, None, :] <= block[:, :, None]) & mask[:, None, :]  # (B, T_query, T_key)
        return positions, allowed[:, None]


def _splicer(k_cached: Tensor, v_cached: Tensor, start: int, attended: KVCache | None = None) -> KVHook:
    def hook(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k, v = splice(k_cached, k, start), splice(v_cached, v, start)
        if attended is not None:
            attended.keys.append(k)
            attended.values.append(v)
        return k, v

    return hook


def _canvas_length(start: int, window: int, cached: int, attention_mask: Tensor | None) -> int:
    """T, the canvas width a window call describes; checks that the cache layout fits it."""
    if cached == start:  # prefix layout: the window is the rest of the canvas
        t = start + window
    elif cached >= start + window:  # dual layout: the cache covers the canvas
        t = cached
    else:
        raise ValueError(f"a cache of {cached} positions fits neither a prefix ending at {start} nor "
                         f"a canvas holding the window [{start}, {start + window})")
    if attention_mask is not None and attention_mask.shape[1] != t:
        raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions but the cache and "
                         f"window describe a canvas of {t} (a prefix window must run to the canvas end)")
    return t


# ------------------------------------------------------------------------------------------------
# the policy


class TinyPolicy(MaskedDiffusionPolicy):
    """The `tiny` masked diffusion policy: ``TinyTransformer`` + ``CharTokenizer``."""

    Config = TinyConfig
    supports_kv_cache = True
    supports_lean_scoring = True

    def __init__(self, arch: TinyArchitecture, tokenizer: CharTokenizer | None) -> None:
        super().__init__()
        if tokenizer is None:
            if arch.vocab_size < 2:
                raise ValueError("a token-only tiny model needs architecture.vocab_size >= 2 (tokens + mask)")
            self._mask_token_id = arch.vocab_size - 1
        else:
            if arch.vocab_size == 0:
                arch = arch.model_copy(update={"vocab_size": tokenizer.vocab_size})
            if arch.vocab_size < tokenizer.vocab_size:
                raise ValueError(
                    f"vocab_size {arch.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}"
                )
            self._mask_token_id = tokenizer.mask_token_id
        self.arch = arch
        self.tokenizer = tokenizer
        self.net = TinyTransformer(arch)
        if arch.block_size is not None:
            self.supports_kv_cache = False  # the cache paths refuse block-causal attention

    @property
    def block_size(self) -> int | None:
        """The block-diffusion block size (None: fully bidirectional)."""
        return self.arch.block_size

    @property
    def mask_token_id(self) -> int:
        return self._mask_token_id

    @property
    def vocab_size(self) -> int:
        return self.arch.vocab_size

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, scored: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        """Raw logits ``[B, T, V]``; with ``scored``/``targets``, the ``[M]`` target log-probs (lean)."""
        if scored is None:
            return self.net(input_ids, attention_mask)
        hidden = self.net.hidden(input_ids, attention_mask)[scored]  # (M, D): the head sees these only
        return target_logprobs(hidden, self.net.lm_head.weight, targets[scored], self.mask_token_id)  # type: ignore[index]

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        self.net._refuse_cache()
        return self.net.forward_cache(input_ids, attention_mask)

    def forward_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None
    ) -> Tensor:
        self.net._refuse_cache()
        return self.net.forward_window(window_ids, start, cache, attention_mask)

    # the exact cache of committed blocks (block-diffusion models; the `block_diffusion` sampler)
    @property
    def supports_block_cache(self) -> bool:
        """True for a block-diffusion model: keys/values of finished blocks never change (later blocks
        are not attended to), so caching them is exact."""
        return self.arch.block_size is not None

    def forward_block_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Raw logits ``[B, T, V]`` (equal to ``forward``'s) and every layer's keys/values, block-causal."""
        self._require_blocks()
        return self.net.forward_cache(input_ids, attention_mask)

    def forward_block_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, KVCache]:
        """Raw logits ``[B, S, V]`` of canvas columns ``[start, start+S)`` against a prefix ``cache`` of
        columns ``[0, start)`` (``attention_mask`` covers ``[0, start+S)``, the canvas the window ends),
        and the keys/values of columns ``[0, start+S)`` (``.truncate`` keeps the committed ones)."""
        self._require_blocks()
        if cache.length != start:
            raise ValueError(f"forward_block_window takes a prefix cache of {start} columns, got {cache.length}")
        attended = KVCache([], [])
        logits = self.net.forward_window(window_ids, start, cache, attention_mask, attended)
        return logits, attended

    def _require_blocks(self) -> None:
        if self.arch.block_size is None:
            raise ValueError("forward_block_cache/forward_block_window need a block-diffusion model "
                             "(architecture.block_size); a bidirectional model's keys/values see the whole canvas")

    supports_gradient_checkpointing = True

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.net.gradient_checkpointing = enabled

    def shard_units(self) -> list[nn.Module]:
        return list(self.net.layers)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def effective_config(cls, config: TinyConfig) -> TinyConfig:
        """The options as loaded: with ``path``, the checkpoint's architecture and character set (what
        config.yaml records); unchanged without a path or where it cannot be read (building reports it)."""
        if config.path is None:
            return config
        try:
            directory = resolve_builtin(config.path)
            arch, _ = _read_tiny_config(directory)
            charset = CharTokenizer.load(directory).charset if (directory / TOKENIZER_FILE).is_file() else None
        except (OSError, ValueError):
            return config
        return config.model_copy(update={"architecture": arch, "charset": charset})

    @classmethod
    def from_config(cls, config: TinyConfig) -> TinyPolicy:  # type: ignore[override]
        if config.path is not None:
            policy = cls.from_pretrained(resolve_builtin(config.path))
        else:
            tokenizer = None if config.charset is None else CharTokenizer(config.charset)
            policy = cls.fresh(config.architecture, tokenizer, seed=config.seed)
        return policy.to(DTYPES[config.dtype])

    @classmethod
    def fresh(cls, arch: TinyArchitecture, tokenizer: CharTokenizer | None, seed: int = 0) -> TinyPolicy:
        """Randomly initialised weights, repeatable from ``seed``."""
        policy = cls(arch, tokenizer)
        policy.net.reset_parameters(torch.Generator().manual_seed(seed))
        return policy

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # block_size is written only when set, so a bidirectional model's config.json is unchanged
        arch = self.arch.model_dump(exclude={"block_size"} if self.arch.block_size is None else None)
        payload = {"model_type": MODEL_TYPE, "mask_token_id": self.mask_token_id, **arch}
        _atomic_write_text(path / CONFIG_FILE, json.dumps(payload, indent=1) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        tmp = path / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / WEIGHTS_FILE)
        if self.tokenizer is not None:
            self.tokenizer.save(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> TinyPolicy:
        """Load a directory written by ``save_pretrained``; a missing, partial, truncated or
        inconsistent directory is a ``FileNotFoundError`` or ``CheckpointError`` naming the file
        and the field."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tiny model directory {path} does not exist")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                present = sorted(p.name for p in path.iterdir())
                partial = (f"; {path} holds only {', '.join(present)}: a partial copy or an interrupted save, "
                           "copy or save the whole directory again (a run's checkpoints/step-N/policy also loads)"
                           if present else "")
                raise FileNotFoundError(f"{path / name} is missing: a tiny-model directory needs "
                                        f"{CONFIG_FILE}, {WEIGHTS_FILE} and (for text) {TOKENIZER_FILE}{partial}")
        arch, mask_token_id = _read_tiny_config(path)
        has_tokenizer = (path / TOKENIZER_FILE).is_file()
        if not has_tokenizer and mask_token_id is not None and mask_token_id != arch.vocab_size - 1:
            # a token-only model keeps its mask at vocab_size - 1; any other id means a text model
            raise FileNotFoundError(
                f"{path / TOKENIZER_FILE} is missing: {path / CONFIG_FILE} describes a text model "
                f"(mask_token_id {mask_token_id} of vocab_size {arch.vocab_size}), whose character set "
                f"lives in {TOKENIZER_FILE}; copy it from the directory this model was saved to"
            )
        tokenizer = CharTokenizer.load(path) if has_tokenizer else None
        policy = cls(arch, tokenizer)
        if mask_token_id is not None and mask_token_id != policy.mask_token_id:
            raise CheckpointError(
                f"{path / CONFIG_FILE}: mask_token_id {mask_token_id} != {policy.mask_token_id}, the mask id of "
                f"{path / TOKENIZER_FILE if has_tokenizer else 'a token-only model'}"
            )
        try:
            state = load_file(str(path / WEIGHTS_FILE))
        except SafetensorError as err:
            raise CheckpointError(corrupt_message(path / WEIGHTS_FILE, err)) from None
        _check_state(path, state, policy.net.state_dict())
        policy.net.load_state_dict(state, strict=True)
        return policy


# the config.json keys that fix the network's shapes and numerics: a config without one of them
# would load with the default and then fail on the weights' shapes (or silently compute otherwise)
REQUIRED_CONFIG_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden", "max_seq_len",
                        "rope_theta", "norm_eps")


def _read_tiny_config(path: Path) -> tuple[TinyArchitecture, int | None]:
    """The architecture and mask id of ``path/config.json``, every problem named by file and key."""
    file = path / CONFIG_FILE
    try:
        payload = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}); save the model again") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{file} must hold a JSON object, not {type(payload).__name__}")
    if payload.pop("model_type", None) != MODEL_TYPE:
        raise CheckpointError(f"{file} is not a {MODEL_TYPE} config (model_type {MODEL_TYPE!r})")
    mask_token_id = payload.pop("mask_token_id", None)
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"{file} lacks {', '.join(repr(k) for k in missing)}: without {'them' if len(missing) > 1 else 'it'} "
            f"the network would be built with ddrl's default{'s' if len(missing) > 1 else ''} "
            f"({', '.join(f'{k}={TinyArchitecture.model_fields[k].default}' for k in missing)}), "
            f"which need not match {WEIGHTS_FILE}; add the value{'s' if len(missing) > 1 else ''} the model was "
            "trained with (save_pretrained writes them all)"
        )
    try:
        return TinyArchitecture.model_validate(payload), mask_token_id
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in err.errors())
        raise CheckpointError(f"{file} has invalid architecture fields: {problems}") from None


# which config.json key sets each dimension of a tensor (named in a shape mismatch)
_SHAPE_KEYS = {"embed_positions": "max_seq_len, d_model", "embed_tokens": "vocab_size, d_model",
               "lm_head": "vocab_size, d_model", "norm": "d_model", "attn.": "d_model", "mlp.": "d_model, ffn_hidden"}


def _check_state(path: Path, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Every tensor the architecture needs, none it does not, each of the shape config.json implies."""
    file, config = path / WEIGHTS_FILE, path / CONFIG_FILE
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"lacks {len(missing)} tensor(s) the architecture needs, e.g. {', '.join(missing[:3])}"] if missing
                 else []) + ([f"holds {len(unexpected)} it does not, e.g. {', '.join(unexpected[:3])}"] if unexpected
                             else [])
        raise CheckpointError(
            f"{file} does not match {CONFIG_FILE} in {path}: it {' and '.join(parts)}; check n_layers and "
            f"absolute_positions in {config} against the model that was saved"
        )
    for name, tensor in state.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            keys = next((v for k, v in _SHAPE_KEYS.items() if k in name), "its architecture fields")
            raise CheckpointError(
                f"{name} in {file} has shape {tuple(tensor.shape)}, but {config} implies {want}: "
                f"check {keys} in {config} against the model that was saved"
            )


BUILTIN_PREFIX = "builtin:"


def builtin_checkpoints() -> dict[str, Path]:
    """The pretrained tiny checkpoints shipped inside the package (``ddrl/assets/tiny/NAME``)."""
    root = Path(__file__).resolve().parent.parent / "assets" / "tiny"
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()}


def resolve_builtin(path: str | Path) -> Path:
    """``builtin:countdown`` -> the shipped directory; any other path is returned unchanged."""
    text = str(path)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(path)
    name = text[len(BUILTIN_PREFIX) :]
    found = builtin_checkpoints()
    if name not in found:
        raise FileNotFoundError(
            f"no built-in tiny checkpoint {name!r}; available: {', '.join(found) or 'none'} "
            "(recreate them with `ddrl pretrain --task NAME`)"
        )
    return found[name]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
