"""Native `llada2` (LLaDA2.x MoE, block diffusion) on a tiny random checkpoint in the published layout.

The checkpoint comes from ``tests/hf_fixtures_llada2.py`` (no ddrl code). The reference logits in
``tests/fixtures/llada2_reference/logits.safetensors`` were computed from that same checkpoint by the
published modeling code (``modeling_llada2_moe.py`` / ``configuration_llada2_moe.py`` of the
LLaDA2.0 release, class ``LLaDA2MoeModelLM``, sdpa attention), run in a throwaway environment outside
the repository with transformers 4.53.3 and torch 2.13 (the file's metadata records both). It
was fed the inputs of ``reference_inputs()`` as follows:

* ``bidirectional``: the unpadded rows with no attention mask (the published forward is then
  fully bidirectional; ddrl's default block size 32 covers the 13 tokens in one block);
* ``block4``: the unpadded rows with the published generate()'s block-causal additive mask
  (blocks of 4) and positions 0..T-1;
* ``block4_padded`` / ``..._train``: the padded batch, mask = blocks of 4 real tokens counted from
  each row's first real token, padding keys excluded, positions from the first real token (ddrl's
  convention), in eval (``moe_infer``) and train (the repeat-interleave MoE path) mode.

The published model loaded every tensor of the checkpoint (no missing or unexpected names) and
its state dict equalled the written tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.models.hf import CheckpointError
from ddrl.models.llada2 import LLaDA2Policy, LLaDA2Router
from ddrl.models.lora import LoraSettings
from ddrl.registry import Registry
from tests.hf_fixtures_llada2 import reference_inputs, write_llada2

pytest.importorskip("peft")

REFERENCE = Path(__file__).parent / "fixtures" / "llada2_reference" / "logits.safetensors"
CLI_ENV = {"COLUMNS": "400", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llada2") / "ckpt"
    write_llada2(path)
    return path


def load(path, **options) -> LLaDA2Policy:
    cls = Registry().get("models", "llada2")
    return cls.from_config(cls.Config(path=str(path), **{"dtype": "float32", **options}))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(REFERENCE))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_the_published_code_with_and_without_padding(checkpoint, reference, attn):
    x = reference_inputs()
    whole = load(checkpoint, attn_implementation=attn).eval()
    blocks = load(checkpoint, attn_implementation=attn, block_size=4).eval()
    real = x["mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(whole(x["ids"]), reference["bidirectional"], atol=1e-4, rtol=0)
        torch.testing.assert_close(blocks(x["ids"]), reference["block4"], atol=1e-4, rtol=0)
        padded = blocks(x["padded"], x["mask"])
        torch.testing.assert_close(padded[real], reference["block4_padded"][real], atol=1e-4, rtol=0)
        torch.testing.assert_close(padded[real], reference["block4_padded_train"][real], atol=1e-4, rtol=0)
        blocks.train()  # no dropout: training mode computes the same logits
        torch.testing.assert_close(blocks(x["padded"], x["mask"])[real], padded[real], atol=1e-5, rtol=0)


def test_the_reference_sees_the_router_bias_and_the_block_mask(checkpoint, reference):
    """The comparison above is sharp: a router that ignored ``expert_bias``, or attention that
    ignored the blocks, would miss the reference by far more than 1e-4."""
    x = reference_inputs()
    policy = load(checkpoint, block_size=4).eval()
    with torch.no_grad():
        assert (policy(x["ids"]) - reference["bidirectional"]).abs().max() > 1e-2
        for module in policy.model.modules():
            if isinstance(module, LLaDA2Router):
                module.expert_bias.zero_()
        assert (policy(x["ids"]) - reference["block4"]).abs().max() > 1e-2


def test_attention_is_bidirectional_inside_a_block_and_causal_across_blocks(checkpoint):
    policy = load(checkpoint, block_size=4).eval()
    assert policy.block_size == 4
    ids = reference_inputs()["ids"][:1]
    changed = ids.clone()
    changed[0, 9] = (changed[0, 9] + 1) % 290  # block 2 (positions 8..11)
    with torch.no_grad():
        a, b = policy(ids), policy(changed)
    diff = (a - b).abs().amax(-1)[0]
    assert float(diff[:8].max()) < 1e-5  # earlier blocks do not see it (float32 noise of masked sdpa only)
    assert bool((diff[8:] > 1e-3).all())  # its own block (also before it) and later blocks do


def test_router_load_counts_each_tokens_experts(checkpoint):
    policy = load(checkpoint).eval()
    ids = reference_inputs()["ids"]
    with torch.no_grad():
        policy(ids)
    load_ = policy.router_load()
    assert sorted(load_) == [1, 2]  # layer 0 is dense (first_k_dense_replace=1)
    for counts in load_.values():
        assert counts.shape == (8,) and int(counts.sum()) == ids.numel() * 3  # 3 experts per token


def test_router_balance_is_summed_over_forwards_and_reset_when_taken(checkpoint):
    policy = load(checkpoint).eval()
    ids = reference_inputs()["ids"]
    with torch.no_grad():
        policy(ids)
        first = {i: c.clone() for i, c in policy.router_load().items()}
        policy(ids[:, :5])
        second = policy.router_load()
    loads = torch.stack([(first[i] + second[i]).double() for i in sorted(first)])  # [MoE layers, experts]
    mean = loads.mean(-1)
    got = policy.auxiliary_metrics()
    assert got["router_load_cv"] == pytest.approx(float((loads.std(-1, unbiased=False) / mean).mean()))
    assert got["router_load_max"] == pytest.approx(float((loads.max(-1).values / mean).mean()))
    assert got["router_experts_unused"] == pytest.approx(float((loads == 0).double().mean()))
    assert got["router_load_cv"] > 0  # random routing is not perfectly balanced
    assert policy.auxiliary_metrics() == {}  # taken: nothing since


def test_conformance_kit(checkpoint):
    from ddrl.testing.conformance import check_model

    check_model("llada2", distribution="ddrl", options={"path": str(checkpoint), "dtype": "float32", "block_size": 4})


def test_save_then_load_round_trips_in_the_published_layout(checkpoint, tmp_path):
    policy = load(checkpoint, block_size=4).eval()
    policy.save_pretrained(tmp_path / "sharded", max_shard_bytes=60_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    original = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(original["weight_map"])  # the published names, all of them
    config = json.loads((tmp_path / "sharded" / "config.json").read_text())
    assert config["model_type"] == "llada2_moe" and config["block_size"] == 4
    assert (tmp_path / "sharded" / "tokenizer.json").is_file()
    again = LLaDA2Policy.from_pretrained(tmp_path / "sharded").eval()
    assert again.block_size == 4
    x = reference_inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(x["padded"], x["mask"]), policy(x["padded"], x["mask"]), atol=0, rtol=0)


def test_bfloat16_gradient_checkpointing_and_lean_scoring(checkpoint):
    x = reference_inputs()
    bf = load(checkpoint, dtype="bfloat16").eval()
    assert bf.lm_head.weight.dtype == torch.bfloat16 and bf.model.rotary_emb.inv_freq.dtype == torch.float32
    with torch.no_grad():
        full = load(checkpoint).eval()(x["padded"], x["mask"])
        got = bf(x["padded"], x["mask"]).float()
    real = x["mask"].bool()
    # bf16 rounding over 3 layers (a near-tie in the router may pick another expert at a few positions)
    assert (got[real] - full[real]).abs().mean() < 0.05

    grads = []
    for enabled in (False, True):
        policy = load(checkpoint).train()
        policy.set_gradient_checkpointing(enabled)
        scored = real.clone()
        out = policy(x["padded"], x["mask"], scored=scored, targets=x["padded"])
        out.sum().backward()
        grads.append(policy.model.layers[1].attention.query_key_value.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_lora_targets_attention_by_default_and_experts_on_request(checkpoint):
    policy = load(checkpoint, lora={"r": 4})
    trainable = {k.split(".lora_")[0].split(".")[-1] for k, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {"query_key_value", "dense"}
    policy = load(checkpoint)
    policy.enable_lora(LoraSettings(r=4, target_modules=["query_key_value", "dense", "gate_proj", "up_proj", "down_proj"]))
    names = [k for k, p in policy.named_parameters() if p.requires_grad]
    assert any(".experts.3.down_proj.lora_" in k for k in names) and not any(".gate.lora" in k for k in names)


def test_ddrl_train_with_lora_runs_two_steps(checkpoint, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--model", "llada2", "--model-path", str(checkpoint), "--set", "model.token_only=true",
        "--set", "model.dtype=float32", "--set", "model.lora.r=4", "--task", "pattern", "--objective", "dmpo",
        "--set", "sampler.max_completion_length=4", "--set", "sampler.block_length=4", "--set", "sampler.steps=2",
        "--set", "train.max_steps=2", "--set", "train.per_device_train_batch_size=4",
        "--set", "train.num_generations=2", "--set", "train.save_steps=2", "--set", "logging.progress=false",
        "--set", "logging.report_to=[jsonl]", "--output-dir", str(run),
    ], env=CLI_ENV)
    assert result.exit_code == 0, result.output
    assert "done: 2 steps" in result.output
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= s["router_experts_unused"] <= 1 and s["router_load_max"] >= 1 for s in steps if "loss" in s)
    trained = LLaDA2Policy.from_pretrained(run / "final", token_only=True)
    base = LLaDA2Policy.from_pretrained(checkpoint, token_only=True)
    for name, p in base.state_dict().items():
        moved = not torch.equal(trained.state_dict()[name], p)
        assert moved == (name.endswith(("query_key_value.weight", "dense.weight"))), name  # only LoRA targets


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llada"}, "not a LLaDA2 MoE checkpoint"),
    ({"num_key_value_heads": None}, "num_key_value_heads"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"num_experts": 6}, "multiple of n_group"),
])
def test_a_config_ddrl_cannot_run_fails_naming_the_key(checkpoint, tmp_path, change, message):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    config = json.loads((broken / "config.json").read_text())
    config.update(change)
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        LLaDA2Policy.from_pretrained(broken)


def test_the_block_elbo_estimator_must_use_the_models_block_size(checkpoint):
    from ddrl.estimators.block_elbo import check_block_size

    policy = load(checkpoint, block_size=4)
    check_block_size(policy, 4)
    with pytest.raises(ValueError, match="block_size"):
        check_block_size(policy, 32)
