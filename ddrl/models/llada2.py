"""`llada2`: LLaDA2.x mixture-of-experts block-diffusion models (inclusionAI/LLaDA2.0-mini,
-flash, ...) from checkpoints in the published ``LLaDA2MoeModelLM`` layout, without remote code.

The architecture (Ling 2.0's MoE decoder trained as a block-diffusion model):

* **Attention**: one fused ``query_key_value`` projection (query heads, then key heads, then value
  heads, each ``head_dim`` wide), grouped-query attention, per-head RMSNorm on queries and keys
  (``query_layernorm`` / ``key_layernorm``, before the rotary), rotate-half rotary embeddings on the
  first ``head_dim * partial_rotary_factor`` channels of each head only, output projection ``dense``
  (bias when ``use_bias``; the fused projection has one when ``use_qkv_bias``).
* **Feed-forward**: the first ``first_k_dense_replace`` layers have a dense SwiGLU MLP
  (``intermediate_size``); the others a routed MoE: a sigmoid router (computed in float32) whose
  scores plus a per-expert ``expert_bias`` choose the experts, group-limited (``n_group`` groups of
  experts ranked by the sum of their two best scores, the best ``topk_group`` groups kept, then the
  best ``num_experts_per_tok`` experts among them); the chosen experts' *unbiased* scores,
  normalised to sum 1 (when more than one) and scaled by ``routed_scaling_factor``, weight their
  SwiGLU outputs (``moe_intermediate_size``), plus a shared SwiGLU expert of width
  ``moe_intermediate_size * num_shared_experts``.
* RMSNorm pre-norm residual blocks, a final ``norm``, an untied ``lm_head`` (unless
  ``tie_word_embeddings``).

Published tensor names -> ddrl's (only the embedding is renamed)::

    model.word_embeddings.weight                         model.embed_tokens.weight
    model.layers.N.attention.query_key_value.{weight,bias}
    model.layers.N.attention.{query_layernorm,key_layernorm}.weight
    model.layers.N.attention.dense.{weight,bias}
    model.layers.N.{input_layernorm,post_attention_layernorm}.weight
    model.layers.N.mlp.{gate_proj,up_proj,down_proj}.weight           (dense layers)
    model.layers.N.mlp.gate.{weight,expert_bias}                      (router; expert_bias is a buffer)
    model.layers.N.mlp.experts.E.{gate_proj,up_proj,down_proj}.weight
    model.layers.N.mlp.shared_experts.{gate_proj,up_proj,down_proj}.weight
    model.norm.weight, lm_head.weight

**Block diffusion.** The published forward takes whatever 4-D additive mask its caller passes; its
``generate`` passes a block-causal one (blocks of ``block_length``, default 32): bidirectional
inside a block, causal across blocks. ddrl builds that mask itself from ``block_size`` (the recipe's
``model.block_size``, else config.json's ``block_size``, else 32) with ddrl's block convention
(``ddrl.models.tiny``): blocks of ``block_size`` real tokens counted from each row's first real
token, left padding excluded from the keys, rotary positions counted from the first real token.

Departures from the published code: attention dropout is not applied (the published configs set
0.0 anyway); routing/expert sums run in float32 in a different order (float32 rounding only); no
generic key/value cache (``forward_cache`` / ``forward_window`` raise: the `fast` sampler's column
blocks need not be the model's) and ``output_router_logits``/aux-loss are not produced;
``router_load()`` reports the last forward's per-expert token counts instead, and
``auxiliary_metrics()`` the balance since the last training step (logged by the trainer).

**Exact cache of committed blocks.** Under block-causal attention the keys/values of a finished
block never change, so caching them is exact: ``supports_block_cache``, ``forward_block_cache`` /
``forward_block_window`` (the contract of ``ddrl.models.tiny``'s, used by the `block_diffusion`
sampler) keep every layer's rotated keys/values ``[B, num_key_value_heads, T, head_dim]`` (before
the grouped-query repeat); the MoE layers hold no state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ddrl.models.cache import KVCache, splice
from ddrl.models.head import target_logprobs
from ddrl.models.hf import (
    CONFIG_FILE,
    CheckpointError,
    Renamer,
    read_config,
    resolve_checkpoint_dir,
)
from ddrl.models.hf_policy import HFDiffusionPolicy, HFPolicyConfig

MODEL_TYPE = "llada2_moe"
DEFAULT_BLOCK_SIZE = 32  # the published generate()'s block_length
# the published generate()'s defaults (LLaDA2.0 tokenizer): used when neither config.json nor the
# tokenizer names a mask token
PUBLISHED_MASK_ID = 156895

# defaults of the published LLaDA2MoeConfig for keys a config.json may omit
_DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu", "use_qkv_bias": False, "use_bias": True, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False, "max_position_embeddings": 16384, "rope_theta": 10000.0,
    "rope_scaling": None, "num_experts": 16, "num_shared_experts": 0, "num_experts_per_tok": 2,
    "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "first_k_dense_replace": 0,
    "head_dim": None, "partial_rotary_factor": 0.5, "norm_head": False,
}
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")


@dataclass
class LLaDA2Arch:
    """The architecture a published config.json describes (ddrl's own, not a transformers config)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int | None
    moe_intermediate_size: int | None
    num_experts: int | None
    num_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    first_k_dense_replace: int
    partial_rotary_factor: float
    rope_theta: float
    rms_norm_eps: float
    use_qkv_bias: bool
    use_bias: bool
    tie_word_embeddings: bool
    _attn_implementation: str = "sdpa"
    is_causal: bool = False
    use_cache: bool = False

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def arch_from_published(published: dict[str, Any]) -> LLaDA2Arch:
    where = f"{CONFIG_FILE} (model_type {published.get('model_type')!r})"
    if published.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{where} is not a LLaDA2 MoE checkpoint (model_type {MODEL_TYPE!r})")
    for key in _REQUIRED:
        if published.get(key) in (None, 0):
            raise CheckpointError(f"{where} lacks {key!r}")
    cfg = {**_DEFAULTS, **{k: v for k, v in published.items() if k in _DEFAULTS or k in _REQUIRED}}
    for key in ("intermediate_size", "moe_intermediate_size"):
        cfg[key] = published.get(key)
    if cfg["rope_scaling"] is not None:
        raise CheckpointError(f"{where}: rope_scaling={cfg['rope_scaling']!r} is not supported by ddrl's llada2")
    if cfg["hidden_act"] != "silu":
        raise CheckpointError(f"{where}: hidden_act={cfg['hidden_act']!r} is not supported (LLaDA2 uses 'silu')")
    if cfg["norm_head"]:
        raise CheckpointError(f"{where}: norm_head=true is not supported by ddrl's llada2")
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg["head_dim"] or int(cfg["hidden_size"]) // heads)
    experts = cfg["num_experts"]
    layers = int(cfg["num_hidden_layers"])
    first_dense = int(cfg["first_k_dense_replace"])
    if experts is not None and first_dense < layers:
        if cfg["moe_intermediate_size"] is None:
            raise CheckpointError(f"{where} lacks 'moe_intermediate_size'")
        if int(experts) % int(cfg["n_group"]):
            raise CheckpointError(f"{where}: num_experts={experts} is not a multiple of n_group={cfg['n_group']}")
    if (experts is None or first_dense > 0) and cfg["intermediate_size"] is None:
        raise CheckpointError(f"{where} lacks 'intermediate_size' (the dense layers' MLP width)")
    return LLaDA2Arch(
        hidden_size=int(cfg["hidden_size"]), num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=int(cfg["num_key_value_heads"]), head_dim=head_dim, vocab_size=int(cfg["vocab_size"]),
        intermediate_size=None if cfg["intermediate_size"] is None else int(cfg["intermediate_size"]),
        moe_intermediate_size=None if cfg["moe_intermediate_size"] is None else int(cfg["moe_intermediate_size"]),
        num_experts=None if experts is None else int(experts), num_shared_experts=int(cfg["num_shared_experts"] or 0),
        num_experts_per_tok=int(cfg["num_experts_per_tok"]), n_group=int(cfg["n_group"]),
        topk_group=int(cfg["topk_group"]), routed_scaling_factor=float(cfg["routed_scaling_factor"]),
        first_k_dense_replace=first_dense, partial_rotary_factor=float(cfg["partial_rotary_factor"]),
        rope_theta=float(cfg["rope_theta"]), rms_norm_eps=float(cfg["rms_norm_eps"]),
        use_qkv_bias=bool(cfg["use_qkv_bias"]), use_bias=bool(cfg["use_bias"]),
        tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
    )


# ------------------------------------------------------------------------------------------------
# the network


def _rms_norm(size: int, eps: float) -> nn.Module:
    from transformers.models.llama.modeling_llama import (
        LlamaRMSNorm,  # float32 statistics, weight * x
    )

    return LlamaRMSNorm(size, eps=eps)


class LLaDA2Rotary(nn.Module):
    """Rotate-half rotary phases for the first ``rope_dim`` channels of a head (float32 buffers)."""

    def __init__(self, config: LLaDA2Arch) -> None:
        super().__init__()
        dim = config.rope_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(x.device)  # [B, T, dim/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x [B, H, T, hd]``: rotate-half on the first ``cos.shape[-1]`` channels, the rest passed."""
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    half = d // 2
    turned = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([rot * cos[:, None] + turned * sin[:, None], rest], dim=-1)


class LLaDA2Attention(nn.Module):
    def __init__(self, config: LLaDA2Arch) -> None:
        super().__init__()
        self.config = config
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim,
                                         bias=config.use_qkv_bias)
        self.query_layernorm = _rms_norm(self.head_dim, config.rms_norm_eps)
        self.key_layernorm = _rms_norm(self.head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=config.use_bias)
        self.is_causal = False

    def forward(self, x: Tensor, mask: Tensor | None, cos_sin: tuple[Tensor, Tensor],
                kv_hook: KVHook | None = None) -> Tensor:
        """``x [B, S, D]`` -> ``[B, S, D]``; ``kv_hook`` maps this window's rotated keys/values
        ``[B, H_kv, S, hd]`` to the ones attended to (``[B, H_kv, T, hd]``, a cache spliced in);
        ``mask [B, 1, S, T]`` (True = may attend)."""
        b, t, _ = x.shape
        qkv = self.query_key_value(x).view(b, t, self.heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        q, k = self.query_layernorm(q), self.key_layernorm(k)
        cos, sin = cos_sin
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if kv_hook is not None:
            k, v = kv_hook(k, v)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if self.config._attn_implementation == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            out = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
        return self.dense(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


KVHook = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # window keys/values -> attended ones


class LLaDA2MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2Router(nn.Module):
    """Sigmoid scores in float32; ``expert_bias`` steers the (group-limited) choice only."""

    def __init__(self, config: LLaDA2Arch) -> None:
        super().__init__()
        assert config.num_experts is not None
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, D]`` -> (chosen experts ``[N, k]``, their float32 weights ``[N, k]``)."""
        c = self.config
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        biased = scores + self.expert_bias.float()
        n = biased.shape[0]
        groups = biased.view(n, c.n_group, -1)
        group_score = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)
        kept = torch.zeros_like(group_score, dtype=torch.bool)
        kept.scatter_(1, group_score.topk(c.topk_group, dim=-1).indices, True)
        allowed = kept[:, :, None].expand_as(groups).reshape(n, -1)
        chosen = biased.masked_fill(~allowed, float("-inf")).topk(c.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, chosen)
        if c.num_experts_per_tok > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return chosen, weights * c.routed_scaling_factor


class LLaDA2MoE(nn.Module):
    def __init__(self, config: LLaDA2Arch) -> None:
        super().__init__()
        assert config.num_experts is not None and config.moe_intermediate_size is not None
        inner = config.moe_intermediate_size
        self.experts = nn.ModuleList(LLaDA2MLP(config.hidden_size, inner) for _ in range(config.num_experts))
        self.gate = LLaDA2Router(config)
        self.shared_experts = (LLaDA2MLP(config.hidden_size, inner * config.num_shared_experts)
                               if config.num_shared_experts else None)
        self.last_load: Tensor | None = None  # tokens routed to each expert in the last forward
        self.load_since: Tensor | None = None  # ... summed over the forwards since ``take_load()``

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        chosen, weights = self.gate(flat)  # [N, k] expert ids and their weights
        choice = chosen.reshape(-1).detach()
        counts = torch.bincount(choice, minlength=len(self.experts)).tolist()  # one host sync per layer
        self.last_load = torch.tensor(counts, dtype=torch.long)
        self.load_since = self.last_load if self.load_since is None else self.load_since + self.last_load
        # the (token, slot) pairs grouped by expert, in token order inside each expert (a stable sort):
        # the same additions in the same order as one pass per expert, without E scans of ``chosen``
        grouped = torch.argsort(choice, stable=True)
        top_k = chosen.shape[1]
        rows_by_expert, slots_by_expert = grouped // top_k, grouped % top_k
        out = torch.zeros(flat.shape, dtype=torch.float32, device=x.device)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            rows, slot = rows_by_expert[start:start + n], slots_by_expert[start:start + n]
            start += n
            y = self.experts[e](flat[rows]).float() * weights[rows, slot, None]
            out = out.index_add(0, rows, y)
        out = out.to(x.dtype).view(b, t, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


class LLaDA2Layer(nn.Module):
    def __init__(self, config: LLaDA2Arch, index: int) -> None:
        super().__init__()
        self.attention = LLaDA2Attention(config)
        moe = config.num_experts is not None and index >= config.first_k_dense_replace
        self.mlp: nn.Module = LLaDA2MoE(config) if moe else LLaDA2MLP(config.hidden_size, config.intermediate_size or 0)
        self.input_layernorm = _rms_norm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = _rms_norm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None, cos_sin: tuple[Tensor, Tensor],
                kv_hook: KVHook | None = None) -> Tensor:
        x = x + self.attention(self.input_layernorm(x), mask, cos_sin, kv_hook)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Model(nn.Module):
    """Embedding, decoder layers, final norm (the head lives on the policy)."""

    def __init__(self, config: LLaDA2Arch) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LLaDA2Layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = _rms_norm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LLaDA2Rotary(config)
        self.gradient_checkpointing = False


# ------------------------------------------------------------------------------------------------
# names

_EMBED = ("model.word_embeddings.weight", "model.embed_tokens.weight")
_LAYER = re.compile(
    r"^model\.layers\.\d+\.(attention\.(query_key_value\.(weight|bias)|(query|key)_layernorm\.weight|dense\.(weight|bias))"
    r"|(input|post_attention)_layernorm\.weight"
    r"|mlp\.((experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj\.weight|gate\.(weight|expert_bias)))$"
)
_TOP = {"model.norm.weight", "lm_head.weight"}


def to_internal(name: str) -> str | None:
    if name == _EMBED[0]:
        return _EMBED[1]
    return name if name in _TOP or _LAYER.match(name) else None


def to_published(name: str) -> str:
    if name == _EMBED[1]:
        return _EMBED[0]
    if name in _TOP or _LAYER.match(name):
        return name
    raise KeyError(f"{name} has no published LLaDA2 name")


# ------------------------------------------------------------------------------------------------
# the policy


class LLaDA2Config(HFPolicyConfig):
    """Recipe options of the `llada2` model (see ``HFPolicyConfig``)."""

    name: str = "llada2"
    block_size: int | None = Field(
        None, ge=1, description="block-diffusion block size; null = config.json's block_size, else 32 "
        "(LLaDA2's published block_length)",
    )


class LLaDA2Policy(HFDiffusionPolicy):
    """LLaDA2.x MoE as a block-diffusion ``MaskedDiffusionPolicy`` from a local published checkpoint."""

    Config = LLaDA2Config
    architecture = "LLaDA2"
    example_repo = "inclusionAI/LLaDA2.0-mini"
    supports_kv_cache: ClassVar[bool] = False  # block-causal: the block cache below instead (module docstring)
    default_lora_targets: ClassVar[tuple[str, ...]] = ("query_key_value", "dense")
    # add ("gate_proj", "up_proj", "down_proj") to model.lora.target_modules for the experts (and
    # the dense/shared MLPs); the router (mlp.gate) is never a LoRA target

    @classmethod
    def hf_config(cls, published: dict[str, Any]) -> Any:
        return arch_from_published(published)

    @classmethod
    def base_model_class(cls) -> type[nn.Module]:
        return LLaDA2Model

    @classmethod
    def renamer(cls) -> Renamer:
        return Renamer(to_internal, to_published)

    @classmethod
    def tied(cls, published: dict[str, Any]) -> bool:
        return bool(published.get("tie_word_embeddings", False))

    @classmethod
    def tokenizer_fallback(cls) -> type | None:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast

    # ---------------------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        """The block-diffusion block size (what ``estimator: block_elbo`` must use)."""
        return int(self.published_config.get("block_size") or DEFAULT_BLOCK_SIZE)

    def auxiliary_metrics(self) -> dict[str, float]:
        """Router balance over every forward since the last call (rollouts, scoring and the loss;
        recomputed forwards under gradient checkpointing count twice), averaged over the MoE layers:
        ``router_load_cv`` (std / mean of the tokens per expert; 0 = perfectly balanced),
        ``router_load_max`` (the busiest expert's share relative to the mean) and
        ``router_experts_unused`` (share of experts that received no token). Resets the counts."""
        loads = []
        for layer in self.model.layers:
            if isinstance(layer.mlp, LLaDA2MoE) and layer.mlp.load_since is not None:
                loads.append(layer.mlp.load_since.double())
                layer.mlp.load_since = None
        if not loads:
            return {}
        load = torch.stack(loads)  # [layers, experts]
        mean = load.mean(-1).clamp(min=1e-12)
        return {
            "router_load_cv": (load.std(-1, unbiased=False) / mean).mean().item(),
            "router_load_max": (load.max(-1).values / mean).mean().item(),
            "router_experts_unused": (load == 0).double().mean().item(),
        }

    def router_load(self) -> dict[int, Tensor]:
        """Per MoE layer (by index), the number of (token, slot) routings each expert received in
        the last forward, ``[num_experts]`` int64 (padding positions included)."""
        return {i: layer.mlp.last_load for i, layer in enumerate(self.model.layers)
                if isinstance(layer.mlp, LLaDA2MoE) and layer.mlp.last_load is not None}

    def block_mask(self, attention_mask: Tensor | None, batch: int, length: int,
                   device: torch.device) -> tuple[Tensor, Tensor]:
        """Rotary positions ``[B, T]`` from each row's first real token, and the boolean mask
        ``[B, 1, T, T]`` (query by key, True = may attend): key j is real and
        ``block(j) <= block(i)`` with ``block = position // block_size``. Padded queries sit in
        block 0 (they attend to the row's first block; their outputs are never read)."""
        if attention_mask is None:
            real = torch.ones(batch, length, dtype=torch.bool, device=device)
        else:
            real = attention_mask.bool().to(device)
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        block = positions // self.block_size
        allowed = (block[:, None, :] <= block[:, :, None]) & real[:, None, :]
        return positions, allowed[:, None]

    def _hidden(self, input_ids: Tensor, positions: Tensor, key_mask: Tensor | None, cache: Any,
                first: Tensor | None, hooks: list[KVHook] | None = None) -> Tensor:
        """``[B, S, D]`` normalised hidden states; ``hooks`` (one per layer) splice/record keys/values."""
        if cache is not None:
            raise NotImplementedError("llada2 has no generic key/value cache paths")
        base = self.model
        if hooks is not None and len(hooks) != len(base.layers):
            raise ValueError(f"{len(hooks)} key/value hooks for {len(base.layers)} layers")
        x = base.embed_tokens(input_ids)
        cos_sin = self._rotary(x, positions)
        for i, layer in enumerate(base.layers):
            hook = None if hooks is None else hooks[i]
            if hook is None and base.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, key_mask, cos_sin, use_reentrant=False)
            else:
                x = layer(x, key_mask, cos_sin, hook)
        return base.norm(x)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, scored: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, T, V]`` (block-causal attention); with ``scored``/``targets`` the ``[M]``
        target log-probs, the head applied at the scored rows only."""
        b, t = input_ids.shape
        positions, mask = self.block_mask(attention_mask, b, t, input_ids.device)
        if scored is None:
            return self._run(input_ids, positions, mask, None, None)
        hidden = self._hidden(input_ids, positions, mask, None, None)[scored]
        return target_logprobs(hidden, self.lm_head.weight, targets[scored], self.mask_token_id)  # type: ignore[index]

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        raise NotImplementedError(
            "llada2 (block-causal attention) has no key/value cache paths: decode it with sampler.cache: none"
        )

    def forward_window(self, window_ids: Tensor, start: int, cache: KVCache,
                       attention_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError(
            "llada2 has no generic key/value cache paths: decode it with sampler.cache: none, or with the "
            "block_diffusion sampler (forward_block_cache / forward_block_window)"
        )

    # the exact cache of committed blocks (the `block_diffusion` sampler; ddrl.models.tiny's contract)
    supports_block_cache: ClassVar[bool] = True  # block-causal: finished blocks' keys/values never change

    def forward_block_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Raw logits ``[B, T, V]`` (equal to ``forward``'s) and every layer's rotated keys/values
        ``[B, H_kv, T, head_dim]``, block-causal."""
        b, t = input_ids.shape
        positions, mask = self.block_mask(attention_mask, b, t, input_ids.device)
        cache = KVCache([], [])

        def keep(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            cache.keys.append(k)
            cache.values.append(v)
            return k, v

        hooks: list[KVHook] = [keep] * len(self.model.layers)
        return self.lm_head(self._hidden(input_ids, positions, mask, None, None, hooks)), cache

    def forward_block_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, KVCache]:
        """Raw logits ``[B, S, V]`` of canvas columns ``[start, start+S)`` against a prefix ``cache`` of
        columns ``[0, start)`` (``attention_mask`` covers ``[0, start+S)``, the canvas the window ends),
        and the keys/values of columns ``[0, start+S)`` (``.truncate`` keeps the committed ones)."""
        b, s = window_ids.shape
        if cache.length != start:
            raise ValueError(f"forward_block_window takes a prefix cache of {start} columns, got {cache.length}")
        if len(cache.keys) != len(self.model.layers):
            raise ValueError(f"the cache holds {len(cache.keys)} layers, the model has {len(self.model.layers)}")
        t = start + s
        if attention_mask is not None and attention_mask.shape[1] != t:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions but the cache and "
                             f"window describe a canvas of {t} (the window must run to the canvas end)")
        positions, mask = self.block_mask(attention_mask, b, t, window_ids.device)
        positions, mask = positions[:, start:], mask[:, :, start:]  # the window's phases and query rows
        attended = KVCache([], [])

        def splicer(k_cached: Tensor, v_cached: Tensor) -> KVHook:
            def hook(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                k, v = splice(k_cached, k, start), splice(v_cached, v, start)
                attended.keys.append(k)
                attended.values.append(v)
                return k, v

            return hook

        hooks = [splicer(k, v) for k, v in zip(cache.keys, cache.values)]
        return self.lm_head(self._hidden(window_ids, positions, mask, None, None, hooks)), attended

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each decoder layer in the backward pass."""
        self.model.gradient_checkpointing = bool(enabled)

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> LLaDA2Policy:
        """``HFDiffusionPolicy.from_pretrained`` plus ``block_size`` (None = config.json's, else 32).
        Without a mask id in config.json, the tokenizer or the options, the published generate()'s
        default ``156895`` is used when the vocabulary has it."""
        block_size = kwargs.pop("block_size", None)
        directory = resolve_checkpoint_dir(path, cls.example_repo)
        published = read_config(directory)
        if (kwargs.get("mask_token_id") is None and "mask_token_id" not in published and kwargs.get("token_only")
                and int(published.get("vocab_size") or 0) > PUBLISHED_MASK_ID):
            kwargs["mask_token_id"] = PUBLISHED_MASK_ID
        policy = super().from_pretrained(directory, **kwargs)
        if block_size is not None:
            policy.published_config = {**policy.published_config, "block_size": int(block_size)}
        return policy  # type: ignore[return-value]

    @classmethod
    def from_config(cls, config: HFPolicyConfig) -> LLaDA2Policy:  # type: ignore[override]
        from ddrl.models.hf import DTYPES

        assert isinstance(config, LLaDA2Config)
        policy = cls.from_pretrained(
            config.path, dtype=DTYPES[config.dtype], attn_implementation=config.attn_implementation,
            mask_token_id=config.mask_token_id, chat_template=config.chat_template,
            tokenizer=config.tokenizer, token_only=config.token_only, block_size=config.block_size,
        )
        if config.lora is not None and not policy.lora_enabled:
            policy.enable_lora(config.lora)
        return policy

    @classmethod
    def random(cls, published: dict[str, Any], dtype: torch.dtype = torch.float32, seed: int = 0,
               std: float = 0.02) -> LLaDA2Policy:
        policy = super().random(published, dtype, seed, std)
        for module in policy.model.modules():
            if isinstance(module, LLaDA2Router):
                module.expert_bias.zero_()
        return policy  # type: ignore[return-value]
