"""Native `llada` and `dream` policies on tiny random checkpoints in the published layout.

Checkpoints come from ``tests/hf_fixtures.py`` (no ddrl code involved) and are loaded through the
path a user takes: ``Registry().get("models", NAME)`` + its Config, and ``ddrl sample``. Logits are
checked against a straightforward float64 re-implementation that reads the raw safetensors
tensors by their published names (attention, RMSNorm, rotate-half RoPE, SwiGLU written out).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.generation import encode_prompts
from ddrl.models.hf import CheckpointError
from ddrl.models.lora import LoraSettings
from ddrl.models.reference import AdapterFreeView
from ddrl.registry import Registry
from tests.hf_fixtures import write_dream, write_llada

pytest.importorskip("peft")

MODELS = ("llada", "dream")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "llada": (root / "llada", write_llada(root / "llada", seed=1)),
        "dream": (root / "dream", write_dream(root / "dream", seed=2)),
    }


def load(name: str, path, **options):
    cls = Registry().get("models", name)
    return cls.from_config(cls.Config(path=str(path), **{"dtype": "float32", **options}))


@pytest.fixture(scope="module")
def policies(checkpoints) -> dict:
    return {name: load(name, checkpoints[name][0]).eval() for name in MODELS}


def canvas(policy, batch: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(policy.tokenizer), (batch, length), generator=gen)


# ------------------------------------------------------------------------------------------------
# an independent reference: the published architecture written out in float64


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions, theta):
    """Rotate-half RoPE on ``x [H, T, hd]`` at integer ``positions [T]``."""
    half = x.shape[-1] // 2
    inv = 1.0 / theta ** (torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    ang = positions.double()[:, None] * inv
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference_logits(name: str, t: dict, config: dict, ids: list[int]) -> torch.Tensor:
    """``[T, V]`` logits of one unpadded sequence; for Dream the prediction of j is output j-1."""
    t = {k: v.double() for k, v in t.items()}
    if name == "llada":
        layers, heads, kv_heads = config["n_layers"], config["n_heads"], config["n_kv_heads"]
        eps, theta = config["rms_norm_eps"], config["rope_theta"]
        emb, final_norm = t["model.transformer.wte.weight"], t["model.transformer.ln_f.weight"]
        head = t.get("model.transformer.ff_out.weight", emb)

        def w(i, part):
            names = {"attn_norm": "attn_norm", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
                     "ff_norm": "ff_norm", "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}
            return t.get(f"model.transformer.blocks.{i}.{names[part]}.weight")

        def b(i, part):
            return None
    else:
        layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
        kv_heads = config["num_key_value_heads"]
        eps, theta = config["rms_norm_eps"], config["rope_theta"]
        emb, final_norm, head = t["model.embed_tokens.weight"], t["model.norm.weight"], t["lm_head.weight"]

        def w(i, part):
            names = {"attn_norm": "input_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
                     "v": "self_attn.v_proj", "o": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
                     "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
            return t[f"model.layers.{i}.{names[part]}.weight"]

        def b(i, part):
            return t.get(f"model.layers.{i}.self_attn.{part}_proj.bias")

    def proj(x, i, part):
        y = x @ w(i, part).T
        bias = b(i, part)
        return y if bias is None else y + bias

    n = len(ids)
    positions = torch.arange(n)
    x = emb[torch.tensor(ids)]
    hd = x.shape[-1] // heads
    for i in range(layers):
        h = _rms(x, w(i, "attn_norm"), eps)
        q = proj(h, i, "q").view(n, heads, hd).transpose(0, 1)
        k = proj(h, i, "k").view(n, kv_heads, hd).transpose(0, 1)
        v = proj(h, i, "v").view(n, kv_heads, hd).transpose(0, 1)
        q, k = _rope(q, positions, theta), _rope(k, positions, theta)
        k = k.repeat_interleave(heads // kv_heads, dim=0)
        v = v.repeat_interleave(heads // kv_heads, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1)  # no causal mask
        x = x + (att @ v).transpose(0, 1).reshape(n, -1) @ w(i, "o").T
        h = _rms(x, w(i, "ff_norm"), eps)
        x = x + (F.silu(h @ w(i, "gate").T) * (h @ w(i, "up").T)) @ w(i, "down").T
    out = _rms(x, final_norm, eps) @ head.T
    if name == "dream":
        out = torch.cat([out[:1], out[:-1]])
    return out


# ------------------------------------------------------------------------------------------------
# numerics


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_independent_reference_with_and_without_left_padding(name, checkpoints, policies):
    path, tensors = checkpoints[name]
    config = json.loads((path / "config.json").read_text())
    policy = policies[name]
    ids = canvas(policy, 2, 11, seed=3)
    ids[0, 4] = ids[1, 7] = policy.mask_token_id
    pad = 3
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :pad] = False
    with torch.no_grad():
        plain = policy(ids)
        padded = policy(ids, mask)
    for row in range(2):
        expected = reference_logits(name, tensors, config, ids[row].tolist()).float()
        torch.testing.assert_close(plain[row], expected, atol=2e-4, rtol=1e-4)
        real = ids[row][mask[row]].tolist()  # the padded row against its unpadded sequence
        expected_real = reference_logits(name, tensors, config, real).float()
        torch.testing.assert_close(padded[row, mask[row]], expected_real, atol=2e-4, rtol=1e-4)
    assert (padded[1, pad:] - plain[1, pad:]).abs().max() > 1e-2  # padding does change the canvas



def test_eager_attention_gives_the_sdpa_logits_with_padding(checkpoints, policies):
    eager = load("dream", checkpoints["dream"][0], attn_implementation="eager").eval()
    ids = canvas(eager, 2, 9, seed=19)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :4] = False
    with torch.no_grad():
        torch.testing.assert_close(eager(ids, mask)[mask], policies["dream"](ids, mask)[mask], atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize("name", MODELS)
def test_a_later_token_changes_earlier_logits_also_in_transformers_own_forward(name, policies):
    policy = policies[name]
    ids = canvas(policy, 1, 9, seed=4)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % len(policy.tokenizer)
    with torch.no_grad():
        a, b = policy(ids), policy(changed)
        own = policy.lm_head(policy.model(input_ids=ids).last_hidden_state)  # transformers' forward
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-3
    if name == "dream":
        own = torch.cat([own[:, :1], own[:, :-1]], dim=1)
    torch.testing.assert_close(own, a, atol=1e-5, rtol=1e-5)


def test_dream_prediction_for_position_j_comes_from_output_j_minus_1(checkpoints):
    policy = load("dream", checkpoints["dream"][0]).eval()
    # make the network an identity: no attention or MLP output, head = embedding, so output j
    # scores token j highest; the policy's logits at j must then score token j-1 highest
    with torch.no_grad():
        for layer in policy.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        policy.model.norm.weight.fill_(1.0)
        policy.lm_head.weight.copy_(policy.model.embed_tokens.weight)
        ids = canvas(policy, 2, 10, seed=5)
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[1, :2] = False
        raw = policy.lm_head(policy.model.norm(policy.model.embed_tokens(ids)))
        assert torch.equal(raw.argmax(-1), ids)
        top = policy(ids, mask).argmax(-1)
    assert torch.equal(top[0, 1:], ids[0, :-1]) and top[0, 0] == ids[0, 0]
    assert torch.equal(top[1, 3:], ids[1, 2:-1]) and top[1, 2] == ids[1, 2]  # first real token: its own


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("layout", ["prefix", "dual"])
def test_window_with_a_fresh_cache_equals_the_full_forward(name, layout, policies):
    policy = policies[name]
    ids = canvas(policy, 2, 16, seed=6)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :3] = False
    starts = [(10, 6)] if layout == "prefix" else [(8, 4), (0, 4), (12, 4)]
    with torch.no_grad():
        for attention_mask in (None, mask):
            full, cache = policy.forward_cache(ids, attention_mask)
            torch.testing.assert_close(full, policy(ids, attention_mask))
            for start, size in starts:
                view = cache.truncate(start) if layout == "prefix" else cache
                got = policy.forward_window(ids[:, start : start + size], start, view, attention_mask)
                torch.testing.assert_close(got, full[:, start : start + size], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_window_reads_keys_and_values_from_the_cache(name, policies):
    policy = policies[name]
    old = canvas(policy, 1, 14, seed=7)
    new = old.clone()
    new[0, :6] = canvas(policy, 1, 6, seed=8)  # only positions before the window change
    start, size = 8, 4
    with torch.no_grad():
        old_full, cache = policy.forward_cache(old)
        stale = policy.forward_window(new[:, start : start + size], start, cache)
        fresh = policy(new)[:, start : start + size]
    torch.testing.assert_close(stale, old_full[:, start : start + size], atol=2e-5, rtol=1e-5)
    assert (stale - fresh).abs().max() > 1e-3



@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fast_sampler_gives_a_prompt_the_same_greedy_output_alone_and_in_a_padded_batch(name, cache, policies):
    policy = policies[name]
    cls = Registry().get("samplers", "fast")
    sampler = cls.from_config(cls.Config(max_completion_length=8, block_length=4, steps=8, cache=cache, threshold=0.5))
    texts = ["one two", "what is 12 + 30? the answer is"]
    ids, mask = encode_prompts(policy, texts)
    assert not bool(mask.all())  # the short prompt is left-padded
    with torch.no_grad():
        batched = sampler.sample(policy, ids, mask)
        for row, text in enumerate(texts):
            alone = sampler.sample(policy, torch.tensor([policy.encode_prompt(text)]))
            assert alone.completion_ids[0].tolist() == batched.completion_ids[row].tolist()
            assert torch.allclose(alone.token_logprobs[0], batched.token_logprobs[row], atol=1e-4)

# ------------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("name", MODELS)
def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(name, checkpoints):
    policy = load(name, checkpoints[name][0]).train()
    ids = canvas(policy, 2, 8, seed=9)
    targets = canvas(policy, 2, 8, seed=10)
    calls = []
    policy.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *args: calls.append(1))

    def grads():
        policy.zero_grad()
        F.cross_entropy(policy(ids).flatten(0, 1), targets.flatten()).backward()
        return {k: p.grad.clone() for k, p in policy.named_parameters()}

    plain = grads()
    assert len(calls) == 1
    policy.set_gradient_checkpointing(True)
    checkpointed = grads()
    assert len(calls) == 3  # forward + recomputation in the backward pass
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5)


def test_lora_trains_only_adapters_reference_is_the_base_and_save_merges(checkpoints, tmp_path):
    path = checkpoints["llada"][0]
    policy = load("llada", path, lora={"r": 4, "alpha": 8.0, "dropout": 0.0})
    trainable = [k for k, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in k for k in trainable)
    assert {k.split(".")[-4] for k in trainable} == {"q_proj", "k_proj", "v_proj", "up_proj"}  # LLaDA's targets
    ids = canvas(policy, 2, 8, seed=11)
    with torch.no_grad():
        base = policy(ids)
    frozen = {k: p.detach().clone() for k, p in policy.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(policy(ids).flatten(0, 1), canvas(policy, 2, 8, seed=12).flatten()).backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[k]) for k, p in policy.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        tuned = policy(ids)
        assert (tuned - base).abs().max() > 1e-3
        with policy.adapters_disabled():
            torch.testing.assert_close(policy(ids), base)
        reference = policy.frozen_reference()  # what the trainer asks for: the adapter-free view, no copy
        assert isinstance(reference, AdapterFreeView) and not list(reference.parameters())
        torch.testing.assert_close(reference.logits(ids), policy.logits(ids) - tuned + base)
    assert all(p.requires_grad for k, p in policy.named_parameters() if ".lora_" in k)  # view left them alone
    policy.save_pretrained(tmp_path / "merged")
    stored = set(json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())["weight_map"]) \
        if (tmp_path / "merged" / "model.safetensors.index.json").exists() \
        else set(load_file(str(tmp_path / "merged" / "model.safetensors")))
    assert stored == set(checkpoints["llada"][1])  # published names, no adapter tensors
    merged = load("llada", tmp_path / "merged").eval()
    assert not merged.lora_enabled
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), tuned, atol=1e-4, rtol=1e-4)
    # unmerged (what a training checkpoint needs): the same modules and tensors come back
    policy.save_resumable(tmp_path / "unmerged")
    restored = type(policy).from_pretrained(tmp_path / "unmerged")
    state, again = policy.state_dict(), restored.state_dict()
    assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)
    policy.save_pretrained(tmp_path / "unmerged")  # merging into the same directory drops the adapter files
    assert not load("llada", tmp_path / "unmerged").lora_enabled


@pytest.mark.parametrize("name", MODELS)
def test_save_then_load_round_trips_in_the_published_layout(name, checkpoints, policies, tmp_path):
    source, tensors = checkpoints[name]
    policy = policies[name]
    policy.save_pretrained(tmp_path / "sharded", max_shard_bytes=60_000)
    policy.save_pretrained(tmp_path / "single")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors) and len(set(index["weight_map"].values())) > 1
    assert set(load_file(str(tmp_path / "single" / "model.safetensors"))) == set(tensors)
    saved_config = json.loads((tmp_path / "single" / "config.json").read_text())
    assert saved_config == json.loads((source / "config.json").read_text())
    for file in ("tokenizer_config.json",):
        assert (tmp_path / "single" / file).read_text() == (source / file).read_text()
    ids = canvas(policy, 2, 9, seed=13)
    with torch.no_grad():
        expected = policy(ids)
        for sub in ("sharded", "single"):
            torch.testing.assert_close(load(name, tmp_path / sub).eval()(ids), expected, atol=0, rtol=0)


def test_llada_weight_tying_uses_the_embedding_as_head(tmp_path):
    tensors = write_llada(tmp_path / "tied", seed=14, shards=1, weight_tying=True)
    config = json.loads((tmp_path / "tied" / "config.json").read_text())
    policy = load("llada", tmp_path / "tied").eval()
    assert policy.lm_head.weight is policy.model.embed_tokens.weight
    ids = canvas(policy, 1, 7, seed=15)
    with torch.no_grad():
        torch.testing.assert_close(policy(ids)[0], reference_logits("llada", tensors, config, ids[0].tolist()).float(),
                                   atol=2e-4, rtol=1e-4)
    policy.save_pretrained(tmp_path / "saved")
    assert set(load_file(str(tmp_path / "saved" / "model.safetensors"))) == set(tensors)


def test_bfloat16_weights_keep_float32_rotary_phases(checkpoints, policies):
    policy = load("llada", checkpoints["llada"][0], dtype="bfloat16").eval()
    assert policy.dtype == torch.bfloat16 and policy.model.rotary_emb.inv_freq.dtype == torch.float32
    ids = canvas(policy, 1, 12, seed=16)
    with torch.no_grad():
        error = (policy(ids).float() - policies["llada"](ids)).abs().max()
        policy.to(torch.bfloat16)(ids)
    assert error < 0.25  # logits are O(10); bf16 rounding only
    assert policy.model.rotary_emb.inv_freq.dtype == torch.float32
    policy.enable_lora(LoraSettings(r=2))
    policy(ids).float().logsumexp(-1).sum().backward()
    adapters = [p for k, p in policy.named_parameters() if ".lora_" in k]
    assert all(p.dtype == torch.float32 and p.grad is not None for p in adapters)


# ------------------------------------------------------------------------------------------------
# tokenizer, mask, chat template


def test_llada_prompt_is_wrapped_in_the_published_chat_template(checkpoints, policies):
    path = checkpoints["llada"][0]
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    text = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nwhat is 12 + 30?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    policy = policies["llada"]
    assert policy.encode_prompt("what is 12 + 30?") == raw.encode(text, add_special_tokens=False).ids
    assert policy.mask_token_id == raw.token_to_id("<|mdm_mask|>")
    assert policy.eos_token_id == raw.token_to_id("<|endoftext|>")
    plain = load("llada", path, chat_template=False)
    assert plain.encode_prompt("what is") == raw.encode("what is", add_special_tokens=False).ids


def test_dream_mask_comes_from_config_and_tokenizer_and_must_agree(checkpoints, policies, tmp_path):
    path = checkpoints["dream"][0]
    policy = policies["dream"]
    published = json.loads((path / "config.json").read_text())
    assert policy.mask_token_id == policy.tokenizer.mask_token_id == published["mask_token_id"]
    assert policy.encode_prompt("hi").count(policy.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    ids = canvas(policy, 1, 5, seed=17)
    with torch.no_grad():
        probs = policy.logits(ids).softmax(-1)
    assert probs[..., policy.mask_token_id].max() == 0
    broken = shutil.copytree(path, tmp_path / "dream")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "mask_token_id": 7}))
    with pytest.raises(ValueError, match="mask_token_id 7 but the tokenizer's mask token is"):
        load("dream", broken)
    assert load("dream", broken, mask_token_id=policy.mask_token_id).mask_token_id == policy.mask_token_id


# ------------------------------------------------------------------------------------------------
# broken directories


def _drop_tensor(directory, name):
    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = directory / index["weight_map"].pop(name)
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard))
    index_file.write_text(json.dumps(index))


def _reshape_tensor(directory, name):
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = directory / index["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, str(shard))


def _set_config(directory, **values):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **values}))


BROKEN = {
    "no config": (lambda d: (d / "config.json").unlink(), FileNotFoundError, r"config\.json is missing"),
    "missing shard": (lambda d: (d / "model-00002-of-00002.safetensors").unlink(), FileNotFoundError,
                      r"model-00002-of-00002\.safetensors is missing: model\.safetensors\.index\.json lists it"),
    "missing key": (lambda d: _drop_tensor(d, "model.transformer.blocks.1.up_proj.weight"), CheckpointError,
                    r"lacks 1 tensor\(s\).*model\.transformer\.blocks\.1\.up_proj\.weight"),
    "wrong shape": (lambda d: _reshape_tensor(d, "model.transformer.blocks.0.k_proj.weight"), CheckpointError,
                    r"blocks\.0\.k_proj\.weight in .* has shape \(63, 64\), but .* implies \(64, 64\)"),
    "no weights": (lambda d: [f.unlink() for f in d.glob("model*")], FileNotFoundError, r"no weights in"),
    "other model": (lambda d: _set_config(d, model_type="Dream"), CheckpointError, r"not a LLaDA checkpoint"),
    "unsupported option": (lambda d: _set_config(d, include_bias=True), CheckpointError,
                           r"include_bias=True is not supported"),
    "no tokenizer": (lambda d: [f.unlink() for f in d.glob("tokenizer*")], FileNotFoundError, r"no tokenizer in"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_directory_fails_naming_the_file_or_key(case, checkpoints, tmp_path):
    directory = shutil.copytree(checkpoints["llada"][0], tmp_path / "llada")
    breaker, error, message = BROKEN[case]
    breaker(directory)
    with pytest.raises(error, match=message):
        load("llada", directory)


def test_a_directory_that_does_not_exist_says_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download GSAI-ML/LLaDA-8B-Instruct"):
        load("llada", tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize("name", MODELS)
def test_ddrl_sample_runs_a_local_checkpoint(name, checkpoints):
    result = CliRunner().invoke(app, [
        "sample", "--model", name, "--model-path", str(checkpoints[name][0]), "-p", "what is 12 + 30?",
        "--device", "cpu", "--set", "sampler.max_completion_length=4", "--set", "sampler.block_length=4",
        "--set", "sampler.steps=2",
    ], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "1 completions x 4 tokens | NFE 2" in result.output


def test_a_deep_copy_is_an_independent_policy(policies):
    policy = policies["dream"]  # the trainer deep-copies a full fine-tuned policy as its reference
    twin = copy.deepcopy(policy)
    ids = canvas(policy, 1, 6, seed=18)
    with torch.no_grad():
        torch.testing.assert_close(twin(ids), policy(ids), atol=0, rtol=0)
    assert twin.lm_head.weight.data_ptr() != policy.lm_head.weight.data_ptr()


def test_a_random_policy_at_any_width_needs_no_checkpoint():
    from ddrl.models.llada import LLaDAPolicy

    published = {"model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2,
                 "mlp_hidden_size": 48, "vocab_size": 300, "mask_token_id": 299, "rope_theta": 500000.0}
    a, b = LLaDAPolicy.random(published, seed=3), LLaDAPolicy.random(published, seed=3)
    assert a.tokenizer is None and a.mask_token_id == 299 and a.vocab_size == 300
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ids = torch.randint(0, 299, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = a.logits(ids)
    assert logits.shape == (2, 7, 300) and bool(torch.isfinite(logits[..., :299]).all())
    half = LLaDAPolicy.random(published, dtype=torch.bfloat16, seed=3)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert a.model.layers[0].self_attn.is_causal is False  # bidirectional
