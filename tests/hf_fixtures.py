"""Tiny random-weight LLaDA and Dream checkpoints written in the *published* layout.

Nothing here uses ddrl: the directories are what ``huggingface-cli download`` would leave for
GSAI-ML/LLaDA-8B-Instruct and Dream-org/Dream-v0-Instruct-7B, shrunk to 2 layers, d_model 64 and
a byte-level BPE tokenizer trained on the fly (plus the models' special tokens and chat templates):

* LLaDA: config.json with LLaDA's keys, ``model-0000i-of-0000n.safetensors`` shards with
  ``model.safetensors.index.json`` under ``model.transformer.blocks.N.*`` names, tokenizer.json and a
  tokenizer_config.json (``PreTrainedTokenizerFast``) carrying LLaDA's chat template.
* Dream: config.json with Qwen2's keys and ``model_type: Dream``, shards under Qwen2 names
  (q/k/v biases, grouped-query attention), vocab.json + merges.txt and a tokenizer_config.json that
  names the custom ``DreamTokenizer`` class (which needs remote code, never run by ddrl).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "one two three four five six seven eight nine ten",
    "what is 12 + 30? the answer is 42.",
    "<reasoning> think step by step </reasoning> <answer> 7 </answer>",
] * 4

LLADA_SPECIALS = [
    "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]
# verbatim from GSAI-ML/LLaDA-8B-Instruct's tokenizer_config.json
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"]
DREAM_CHAT_TEMPLATE = (  # Qwen2.5's template (default system prompt), as Dream-Instruct uses it
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLADA_ARCH = dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=96, embedding_size=320)
DREAM_ARCH = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                  intermediate_size=96, vocab_size=320)


def train_bpe(vocab_size: int = 290) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _added(specials: list[str], first_id: int) -> dict[str, dict]:
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    return {str(first_id + i): {"content": s, **flags} for i, s in enumerate(specials)}


def _write_shards(directory: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    names = sorted(tensors)
    n = max(1, shards)
    if n == 1:
        save_file({k: tensors[k] for k in names}, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i in range(n):
        file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in names[i::n]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _randn(gen: torch.Generator, *shape: int, std: float) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


def write_llada(directory: Path, seed: int = 0, shards: int = 2, weight_tying: bool = False,
                dtype: torch.dtype = torch.float32, **arch: int) -> dict[str, torch.Tensor]:
    """A tiny LLaDA checkpoint; returns its tensors under their published names."""
    a = {**LLADA_ARCH, **arch}
    directory.mkdir(parents=True, exist_ok=True)
    tok = train_bpe()
    n = tok.get_vocab_size()
    tok.add_special_tokens(LLADA_SPECIALS)
    ids = {s: n + i for i, s in enumerate(LLADA_SPECIALS)}
    tok.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": _added(LLADA_SPECIALS, n),
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "chat_template": LLADA_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    config = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": a["d_model"],
        "embedding_dropout": 0.0, "embedding_size": a["embedding_size"], "eos_token_id": ids["<|endoftext|>"],
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": ids["<|mdm_mask|>"],
        "max_sequence_length": 128, "mlp_hidden_size": a["mlp_hidden_size"], "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": a["n_heads"], "n_kv_heads": a["n_kv_heads"],
        "n_layers": a["n_layers"],
        "pad_token_id": ids["<|endoftext|>"], "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
        "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
        "transformers_version": "4.46.3", "use_cache": False, "vocab_size": a["embedding_size"],
        "weight_tying": weight_tying,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(seed)
    d, hd = a["d_model"], a["d_model"] // a["n_heads"]
    kv, f, v = a["n_kv_heads"] * hd, a["mlp_hidden_size"], a["embedding_size"]
    t = {"model.transformer.wte.weight": _randn(gen, v, d, std=1.0),
         "model.transformer.ln_f.weight": 1 + _randn(gen, d, std=0.1)}
    if not weight_tying:
        t["model.transformer.ff_out.weight"] = _randn(gen, v, d, std=0.3)
    for i in range(a["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        t[p + "attn_norm.weight"] = 1 + _randn(gen, d, std=0.1)
        t[p + "ff_norm.weight"] = 1 + _randn(gen, d, std=0.1)
        t[p + "q_proj.weight"] = _randn(gen, d, d, std=0.4)
        t[p + "k_proj.weight"] = _randn(gen, kv, d, std=0.4)
        t[p + "v_proj.weight"] = _randn(gen, kv, d, std=0.3)
        t[p + "attn_out.weight"] = _randn(gen, d, d, std=0.1)
        t[p + "ff_proj.weight"] = _randn(gen, f, d, std=0.2)
        t[p + "up_proj.weight"] = _randn(gen, f, d, std=0.2)
        t[p + "ff_out.weight"] = _randn(gen, d, f, std=0.1)
    t = {k: x.to(dtype) for k, x in t.items()}
    _write_shards(directory, t, shards)
    return t


def write_dream(directory: Path, seed: int = 0, shards: int = 3, **arch: int) -> dict[str, torch.Tensor]:
    """A tiny Dream checkpoint; returns its tensors under their published names."""
    a = {**DREAM_ARCH, **arch}
    directory.mkdir(parents=True, exist_ok=True)
    tok = train_bpe()
    n = tok.get_vocab_size()
    tok.model.save(str(directory))  # vocab.json + merges.txt
    ids = {s: n + i for i, s in enumerate(DREAM_SPECIALS)}
    tokenizer_config = {
        "added_tokens_decoder": _added(DREAM_SPECIALS, n),
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>", "chat_template": DREAM_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "errors": "replace", "model_max_length": 131072, "split_special_tokens": False,
        "tokenizer_class": "DreamTokenizer", "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "tokenization_dream.py").write_text("raise RuntimeError('remote code must never run')\n")
    config = {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": ids["<|beginoftext|>"], "eos_token_id": ids["<|endoftext|>"], "hidden_act": "silu",
        "hidden_size": a["hidden_size"], "initializer_range": 0.02, "intermediate_size": a["intermediate_size"],
        "mask_token_id": ids["<|mask|>"], "max_position_embeddings": 128, "max_window_layers": 28,
        "model_type": "Dream", "num_attention_heads": a["num_attention_heads"],
        "num_hidden_layers": a["num_hidden_layers"], "num_key_value_heads": a["num_key_value_heads"],
        "pad_token_id": ids["<|endoftext|>"], "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False,
        "vocab_size": a["vocab_size"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(seed)
    d, hd = a["hidden_size"], a["hidden_size"] // a["num_attention_heads"]
    kv, f, v = a["num_key_value_heads"] * hd, a["intermediate_size"], a["vocab_size"]
    t = {"model.embed_tokens.weight": _randn(gen, v, d, std=1.0), "model.norm.weight": 1 + _randn(gen, d, std=0.1),
         "lm_head.weight": _randn(gen, v, d, std=0.3)}
    for i in range(a["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + _randn(gen, d, std=0.1)
        t[p + "post_attention_layernorm.weight"] = 1 + _randn(gen, d, std=0.1)
        for proj, rows in (("q_proj", d), ("k_proj", kv), ("v_proj", kv)):
            t[p + f"self_attn.{proj}.weight"] = _randn(gen, rows, d, std=0.4)
            t[p + f"self_attn.{proj}.bias"] = _randn(gen, rows, std=0.2)
        t[p + "self_attn.o_proj.weight"] = _randn(gen, d, d, std=0.1)
        t[p + "mlp.gate_proj.weight"] = _randn(gen, f, d, std=0.2)
        t[p + "mlp.up_proj.weight"] = _randn(gen, f, d, std=0.2)
        t[p + "mlp.down_proj.weight"] = _randn(gen, d, f, std=0.1)
    _write_shards(directory, t, shards)
    return t
