"""`dream`: Dream-7B (Dream-org/Dream-v0-Instruct-7B, -Base) without remote code.

Dream is Qwen2.5-7B's network (RMSNorm, rotary embeddings, SwiGLU, biases on q/k/v only,
grouped-query attention) run with bidirectional attention and trained as a masked diffusion
model that keeps the autoregressive *shift*: the output at position j-1 predicts token j.
The policy undoes the shift (``shift_logits``) so that, as every ddrl policy, its logits at j
predict token j; the first real position of a row gets its own output (Dream's generation code
copies position 0 the same way). Such a position is always a prompt token, never predicted.

The published parameter names and config.json keys are Qwen2's (``model.layers.N.self_attn.q_proj``,
``hidden_size``, ``num_key_value_heads``, ``rope_theta``, ...), so the checkpoint loads into
transformers' ``Qwen2Model`` + ``lm_head`` under its own names. The mask id comes from
config.json (``mask_token_id``, 151666 in the published model) or the tokenizer's ``<|mask|>``.
The published tokenizer class (``DreamTokenizer``) needs remote code; its files are Qwen2's
byte-level BPE, which transformers' ``Qwen2Tokenizer`` reads directly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ddrl.models.hf import CONFIG_FILE, CheckpointError, Renamer
from ddrl.models.hf_policy import HFDiffusionPolicy, HFPolicyConfig

MODEL_TYPE = "Dream"


def _same(name: str) -> str:
    return name


def _ignored(name: str) -> bool:
    return name.endswith("rotary_emb.inv_freq")  # a buffer some exports store; it is recomputed


class DreamConfig(HFPolicyConfig):
    """Recipe options of the `dream` model (see ``HFPolicyConfig``)."""

    name: str = "dream"


class DreamPolicy(HFDiffusionPolicy):
    """Dream as a ``MaskedDiffusionPolicy`` (logits shifted so that position j predicts token j)."""

    Config = DreamConfig
    architecture = "Dream"
    example_repo = "Dream-org/Dream-v0-Instruct-7B"
    shift_logits = True
    default_lora_targets: ClassVar[tuple[str, ...]] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )

    @classmethod
    def hf_config(cls, published: dict[str, Any]) -> Any:
        from transformers import Qwen2Config

        where = f"{CONFIG_FILE} (model_type {published.get('model_type')!r})"
        if str(published.get("model_type", "")).lower() != MODEL_TYPE.lower():
            raise CheckpointError(f"{where} is not a Dream checkpoint (model_type 'Dream'); use the matching model")
        if published.get("use_sliding_window"):
            raise CheckpointError(f"{where}: use_sliding_window=true is not supported (Dream-7B attends everywhere)")
        if published.get("rope_scaling") is not None:
            scaling = published["rope_scaling"]
            raise CheckpointError(f"{where}: rope_scaling={scaling!r} is not supported (Dream-7B has none)")
        if published.get("hidden_act", "silu") != "silu":
            act = published["hidden_act"]
            raise CheckpointError(f"{where}: hidden_act={act!r} is not supported (Dream-7B uses 'silu')")
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if key not in published:
                raise CheckpointError(f"{where} lacks {key!r}")
        heads = int(published["num_attention_heads"])
        return Qwen2Config(
            hidden_size=int(published["hidden_size"]),
            intermediate_size=int(published["intermediate_size"]),
            num_hidden_layers=int(published["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(published.get("num_key_value_heads") or heads),
            vocab_size=int(published["vocab_size"]),
            rms_norm_eps=float(published.get("rms_norm_eps", 1e-6)),
            rope_theta=float(published.get("rope_theta", 10000.0)),
            max_position_embeddings=int(published.get("max_position_embeddings", 32768)),
            hidden_act="silu",
            attention_dropout=float(published.get("attention_dropout", 0.0)),
            tie_word_embeddings=bool(published.get("tie_word_embeddings", False)),
            use_sliding_window=False,
            pad_token_id=published.get("pad_token_id"),  # Dream's embedding keeps this padding row
        )

    @classmethod
    def base_model_class(cls) -> type[nn.Module]:
        from transformers import Qwen2Model

        return Qwen2Model

    @classmethod
    def renamer(cls) -> Renamer:
        return Renamer(_same, _same, _ignored)

    @classmethod
    def tied(cls, published: dict[str, Any]) -> bool:
        return bool(published.get("tie_word_embeddings", False))

    @classmethod
    def tokenizer_fallback(cls) -> type | None:
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer
