"""`llada`: LLaDA-8B (GSAI-ML/LLaDA-8B-Instruct, -Base, LLaDA-1.5) without remote code.

LLaDA's block is Llama's with bidirectional attention: RMSNorm, rotary embeddings (rotate-half),
SwiGLU MLP, no biases, untied head, mask token 126336. It runs on transformers' ``LlamaModel``
(see ``ddrl.models.hf_policy``); this module only translates the published checkpoint:

    published (modeling_llada.py)                    transformers LlamaModel
    model.transformer.wte.weight                     model.embed_tokens.weight
    model.transformer.blocks.N.attn_norm.weight      model.layers.N.input_layernorm.weight
    model.transformer.blocks.N.{q,k,v}_proj.weight   model.layers.N.self_attn.{q,k,v}_proj.weight
    model.transformer.blocks.N.attn_out.weight       model.layers.N.self_attn.o_proj.weight
    model.transformer.blocks.N.ff_norm.weight        model.layers.N.post_attention_layernorm.weight
    model.transformer.blocks.N.ff_proj.weight        model.layers.N.mlp.gate_proj.weight  (silu applied)
    model.transformer.blocks.N.up_proj.weight        model.layers.N.mlp.up_proj.weight
    model.transformer.blocks.N.ff_out.weight         model.layers.N.mlp.down_proj.weight
    model.transformer.ln_f.weight                    model.norm.weight
    model.transformer.ff_out.weight                  lm_head.weight   (absent when weight_tying)

and config.json keys: d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size (or mlp_ratio),
embedding_size / vocab_size, rope_theta, rms_norm_eps, max_sequence_length, weight_tying,
mask_token_id. Options of the published code that LLaDA's checkpoints do not use (biases, ALiBi,
QK-norm, LayerNorm, logit scaling, ...) are rejected with an error naming the key.

Departures from the published modeling code: the attention mask is honoured (the published code
ignored it until 2025-10, so padding changed its logits), and rotary phases are applied in the
model dtype after computing cos/sin in float32 (the published code rotates in float32), which
differs only at bf16 rounding level.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from torch import nn

from ddrl.models.hf import CONFIG_FILE, CheckpointError, Renamer
from ddrl.models.hf_policy import HFDiffusionPolicy, HFPolicyConfig

MODEL_TYPE = "llada"

_BLOCK = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(\w+)\.weight$")
_BLOCK_TO_LAYER = {
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
_LAYER_TO_BLOCK = {v: k for k, v in _BLOCK_TO_LAYER.items()}
_TOP = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
_TOP_BACK = {v: k for k, v in _TOP.items()}

# config.json values the published LLaDA checkpoints use; anything else is another architecture
_REQUIRED: dict[str, Any] = {
    "block_type": "llama",
    "layer_norm_type": "rms",
    "activation_type": "silu",
    "rope": True,
    "alibi": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "bias_for_layer_norm": False,
    "attention_layer_norm": False,
    "layer_norm_with_affine": True,
    "input_emb_norm": False,
    "scale_logits": False,
    "block_group_size": 1,
    "rope_scaling": None,
}


def to_internal(name: str) -> str | None:
    if name in _TOP:
        return _TOP[name]
    match = _BLOCK.match(name)
    if match is None or match.group(2) not in _BLOCK_TO_LAYER:
        return None
    return f"model.layers.{match.group(1)}.{_BLOCK_TO_LAYER[match.group(2)]}.weight"


def to_published(name: str) -> str:
    if name in _TOP_BACK:
        return _TOP_BACK[name]
    match = re.match(r"^model\.layers\.(\d+)\.(.+)\.weight$", name)
    if match is None or match.group(2) not in _LAYER_TO_BLOCK:
        raise KeyError(f"{name} has no published LLaDA name")
    return f"model.transformer.blocks.{match.group(1)}.{_LAYER_TO_BLOCK[match.group(2)]}.weight"


class LLaDAConfig(HFPolicyConfig):
    """Recipe options of the `llada` model (see ``HFPolicyConfig``)."""

    name: str = "llada"


class LLaDAPolicy(HFDiffusionPolicy):
    """LLaDA as a ``MaskedDiffusionPolicy``, loaded from a local published checkpoint."""

    Config = LLaDAConfig
    architecture = "LLaDA"
    example_repo = "GSAI-ML/LLaDA-8B-Instruct"
    # LLaDA has no o_proj/gate_proj under the usual names: its published LoRA targets are these
    default_lora_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "up_proj")

    @classmethod
    def hf_config(cls, published: dict[str, Any]) -> Any:
        from transformers import LlamaConfig

        where = f"{CONFIG_FILE} (model_type {published.get('model_type')!r})"
        if published.get("model_type") != MODEL_TYPE:
            raise CheckpointError(
                f"{where} is not a LLaDA checkpoint (model_type 'llada'); use the model that matches it"
            )
        for key, value in _REQUIRED.items():
            got = published.get(key, value)
            if key == "bias_for_layer_norm" and got is None:
                got = published.get("include_bias", False)
            if got != value:
                raise CheckpointError(
                    f"{where}: {key}={got!r} is not supported by ddrl's native llada "
                    f"(LLaDA-8B uses {value!r})"
                )
        for key in ("d_model", "n_heads", "n_layers"):
            if key not in published:
                raise CheckpointError(f"{where} lacks {key!r}")
        d_model, n_heads = int(published["d_model"]), int(published["n_heads"])
        n_kv = 1 if published.get("multi_query_attention") else int(published.get("n_kv_heads") or n_heads)
        hidden = published.get("mlp_hidden_size") or int(published.get("mlp_ratio", 4)) * d_model
        vocab = published.get("embedding_size") or published.get("vocab_size")
        if vocab is None:
            raise CheckpointError(f"{where} lacks 'embedding_size' and 'vocab_size'")
        return LlamaConfig(
            hidden_size=d_model,
            intermediate_size=int(hidden),
            num_hidden_layers=int(published["n_layers"]),
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            vocab_size=int(vocab),
            rms_norm_eps=float(published.get("rms_norm_eps", 1e-5)),
            rope_theta=float(published.get("rope_theta", 10000.0)),
            max_position_embeddings=int(published.get("max_sequence_length", 4096)),
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
            attention_dropout=float(published.get("attention_dropout", 0.0)),
            tie_word_embeddings=bool(published.get("weight_tying", False)),
            pad_token_id=None,  # LLaDA's embedding has no padding row (its pad id is EOS, which must train)
        )

    @classmethod
    def base_model_class(cls) -> type[nn.Module]:
        from transformers import LlamaModel

        return LlamaModel

    @classmethod
    def renamer(cls) -> Renamer:
        return Renamer(to_internal, to_published)

    @classmethod
    def tied(cls, published: dict[str, Any]) -> bool:
        return bool(published.get("weight_tying", False))

    @classmethod
    def tokenizer_fallback(cls) -> type | None:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast

    @classmethod
    def lora_target(cls, name: str) -> str:
        """Published block names (``attn_out``, ``ff_proj``, ``ff_out``) -> transformers names."""
        return _BLOCK_TO_LAYER.get(name, name).split(".")[-1]
