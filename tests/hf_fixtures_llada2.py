"""A tiny random-weight LLaDA2 MoE checkpoint written in the *published* layout.

Nothing here uses ddrl: the directory is what ``huggingface-cli download inclusionAI/LLaDA2.0-mini``
would leave, shrunk: config.json with the published ``LLaDA2MoeConfig`` key set (``model_type
llada2_moe``, ``architectures: [LLaDA2MoeModelLM]``, ``auto_map``), ``model-0000i-of-0000n.safetensors``
shards with ``model.safetensors.index.json`` under the published tensor names, and a byte-level BPE
tokenizer (``PreTrainedTokenizerFast``) with LLaDA2's special tokens.

The reference logits in ``tests/fixtures/llada2_reference/`` were computed from ``write_llada2(dir)``
(the defaults below) by the published modeling code, run outside the repository: see
``tests/test_llada2.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.hf_fixtures import _added, _randn, _write_shards, train_bpe

LLADA2_SPECIALS = ["<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>"]
# the shape of LLaDA2.0's chat template (HUMAN / ASSISTANT turns)
LLADA2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<role>HUMAN</role>' + message['content'] + "
    "'<|role_end|>' }}{% elif message['role'] == 'assistant' %}{{ '<role>ASSISTANT</role>' + message['content'] + "
    "'<|role_end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}"
)

# a few experts in groups, a first dense layer, a shared expert, GQA, partial rotary, QK norm
LLADA2_ARCH = {
    "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 48, "moe_intermediate_size": 16, "num_experts": 8, "num_shared_experts": 1,
    "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2, "first_k_dense_replace": 1, "vocab_size": 320,
}


def write_llada2(directory: Path, seed: int = 0, shards: int = 2, **overrides) -> dict[str, torch.Tensor]:
    """A tiny LLaDA2 MoE checkpoint; returns its tensors under their published names."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = train_bpe()
    n = tok.get_vocab_size()
    tok.add_special_tokens(LLADA2_SPECIALS)
    ids = {s: n + i for i, s in enumerate(LLADA2_SPECIALS)}
    tok.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "added_tokens_decoder": _added(LLADA2_SPECIALS, n), "bos_token": None, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "mask_token": "<|mask|>", "chat_template": LLADA2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "model_max_length": 8192, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    config = {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                     "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "model_type": "llada2_moe", "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 256, "max_window_layers": 3,
        "norm_head": False, "norm_softmax": False, "norm_topk_prob": True, "output_router_logits": False,
        "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 600000,
        "routed_scaling_factor": 2.5, "router_dtype": "fp32", "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True, "tie_word_embeddings": False, "torch_dtype": "float32",
        "use_bias": False, "use_qkv_bias": False, "use_qk_norm": True, "use_rmsnorm": True, "use_cache": False,
        "use_sliding_window": False, "sliding_window": 4096, "using_split_qkv_in_self_attention": False,
        "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"],
        "mask_token_id": ids["<|mask|>"], **LLADA2_ARCH,
    }
    config.update(overrides)
    (directory / "config.json").write_text(json.dumps(config, indent=2))

    gen = torch.Generator().manual_seed(seed)
    d, heads, kv, hd = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    t: dict[str, torch.Tensor] = {
        "model.word_embeddings.weight": _randn(gen, config["vocab_size"], d, std=0.5),
        "model.norm.weight": 1 + _randn(gen, d, std=0.1),
        "lm_head.weight": _randn(gen, config["vocab_size"], d, std=0.2),
    }

    def mlp(prefix: str, inner: int) -> None:
        t[f"{prefix}.gate_proj.weight"] = _randn(gen, inner, d, std=0.2)
        t[f"{prefix}.up_proj.weight"] = _randn(gen, inner, d, std=0.2)
        t[f"{prefix}.down_proj.weight"] = _randn(gen, d, inner, std=0.2)

    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = 1 + _randn(gen, d, std=0.1)
        t[f"{p}.post_attention_layernorm.weight"] = 1 + _randn(gen, d, std=0.1)
        t[f"{p}.attention.query_key_value.weight"] = _randn(gen, (heads + 2 * kv) * hd, d, std=0.2)
        if config["use_qkv_bias"]:
            t[f"{p}.attention.query_key_value.bias"] = _randn(gen, (heads + 2 * kv) * hd, std=0.1)
        t[f"{p}.attention.query_layernorm.weight"] = 1 + _randn(gen, hd, std=0.1)
        t[f"{p}.attention.key_layernorm.weight"] = 1 + _randn(gen, hd, std=0.1)
        t[f"{p}.attention.dense.weight"] = _randn(gen, d, heads * hd, std=0.2)
        if config["use_bias"]:
            t[f"{p}.attention.dense.bias"] = _randn(gen, d, std=0.1)
        if i < config["first_k_dense_replace"]:
            mlp(f"{p}.mlp", config["intermediate_size"])
            continue
        t[f"{p}.mlp.gate.weight"] = _randn(gen, config["num_experts"], d, std=0.5)
        t[f"{p}.mlp.gate.expert_bias"] = _randn(gen, config["num_experts"], std=0.3)  # steers the choice
        for e in range(config["num_experts"]):
            mlp(f"{p}.mlp.experts.{e}", config["moe_intermediate_size"])
        if config["num_shared_experts"]:
            mlp(f"{p}.mlp.shared_experts", config["moe_intermediate_size"] * config["num_shared_experts"])
    _write_shards(directory, t, shards)
    return t


def reference_inputs(vocab: int = 295) -> dict[str, torch.Tensor]:
    """The token rows the reference logits were computed on: 2 rows of 13 tokens, and the same rows
    left-padded by 3 and 0 positions into a batch of 16 (pad id 0, attention mask)."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (2, 13), generator=gen)
    padded = torch.zeros(2, 16, dtype=torch.long)
    mask = torch.zeros(2, 16, dtype=torch.long)
    padded[0, 3:], mask[0, 3:] = ids[0], 1
    padded[1, :13], mask[1, :13] = ids[1], 1  # right part of row 1: padding at the end (a shorter row)
    return {"ids": ids, "padded": padded, "mask": mask}


# ------------------------------------------------------------------------------------------------
# shared by the published-generate equivalence tests (LLaDA2.0 and LLaDA2.1 references)


def tiny_llada2_policies(tmp_path_factory, block_sizes) -> dict:
    """``{block_size: policy}``: the tiny published-layout checkpoint per block size, float32, eval."""
    from ddrl.registry import Registry

    cls = Registry().get("models", "llada2")
    out = {}
    for bs in sorted(set(block_sizes)):
        path = tmp_path_factory.mktemp(f"llada2_b{bs}") / "ckpt"
        write_llada2(path, block_size=bs)
        out[bs] = cls.from_config(cls.Config(path=str(path), dtype="float32")).eval()
    return out


def cut_at_eos(ids: list[int], eos: int) -> list[int]:
    """The ids up to and including the first ``eos``, as the published ``generate`` returns them."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, P]`` ids and mask of the prompts left-padded to one width (pad id 0)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), True
    return ids, mask
