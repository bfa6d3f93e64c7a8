"""The memory plan (``ddrl train --dry-run``) and out-of-memory errors that name the setting to change."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import build_config, resolve_config
from ddrl.models.llada import LLaDAConfig, LLaDAPolicy
from ddrl.registry import Registry
from ddrl.training.memory_plan import GIB, plan_run, skeleton_shape
from ddrl.training.trainer import OutOfMemory, Trainer
from tests.hf_fixtures import write_llada
from tests.test_trainer import PATTERN, recipe

LLADA_8B = {"model_type": "llada", "n_layers": 32, "d_model": 4096, "n_heads": 32, "n_kv_heads": 32,
            "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464, "mask_token_id": 126336,
            "rope_theta": 500000.0, "weight_tying": False, "max_sequence_length": 4096, "rms_norm_eps": 1e-5}


def _signature(policy: torch.nn.Module) -> dict[str, tuple]:
    return {n: (tuple(p.shape), p.dtype, p.requires_grad) for n, p in policy.named_parameters()}


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0}])
def test_the_skeleton_has_the_built_policys_parameters_without_reading_weights(tmp_path, lora):
    pytest.importorskip("peft")
    write_llada(tmp_path / "llada", seed=1)
    config = LLaDAConfig(path=str(tmp_path / "llada"), dtype="bfloat16", lora=lora)
    built, skeleton = LLaDAPolicy.from_config(config), LLaDAPolicy.skeleton(config)
    assert _signature(skeleton) == _signature(built)
    assert all(p.is_meta for p in skeleton.parameters())
    shape = skeleton_shape(skeleton)
    assert (shape.layers, shape.d_model, shape.mlp_hidden, shape.vocab) == (2, 64, 96, built.vocab_size)
    assert shape.weight_bytes == sum(p.numel() * p.element_size() for p in built.parameters())


def test_the_8b_plan_counts_llada_8b_exactly_and_shards_over_processes(tmp_path):
    (tmp_path / "llada8b").mkdir()
    (tmp_path / "llada8b" / "config.json").write_text(json.dumps(LLADA_8B))  # no weights needed
    raw = {"model": {"name": "llada", "path": str(tmp_path / "llada8b"), "dtype": "bfloat16"},
           "task": {"name": "countdown"}, "objective": {"name": "dmpo"},
           "sampler": {"name": "block", "max_completion_length": 256},
           "train": {"per_device_train_batch_size": 4, "max_prompt_length": 200, "gradient_checkpointing": True}}
    d, f, v, n = 4096, 12288, 126464, 32
    parameters = 2 * v * d + n * (4 * d * d + 3 * d * f + 2 * d) + d  # embeddings, head; blocks; final norm
    registry = Registry()

    def lines(**train):
        cfg = resolve_config(build_config({**raw, "train": {**raw["train"], **train}}), registry)
        return {line.item: line for line in plan_run(cfg, registry, {})[0]}

    one = lines()
    assert one["weights"].gib == pytest.approx(2 * parameters / GIB)
    assert one["gradients"].gib == one["weights"].gib and one["AdamW moments"].gib == 2 * one["weights"].gib
    assert "reference copy" in one  # full fine-tuning keeps a frozen copy
    eight = lines(sharding="fsdp2", num_processes=8)
    assert eight["weights"].gib == pytest.approx(one["weights"].gib / 8)
    assert eight["gathered for rollouts"].gib == pytest.approx(2 * one["weights"].gib * 7 / 8)
    assert eight["peak during updates"].gib < one["peak during updates"].gib / 4
    micro = lines(loss_micro_batch_size=4)
    assert micro["activations (loss)"].gib == pytest.approx(one["activations (loss)"].gib / 4)  # 16 views -> 4
    unckpt = lines(gradient_checkpointing=False)
    assert unckpt["activations (loss)"].gib > 10 * one["activations (loss)"].gib


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
    out = CliRunner().invoke(app, ["train", "--dry-run", "--output-dir", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "memory plan per process: tiny" in out.output and "peak during updates" in out.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("phase,setting", [("update", "train.gradient_checkpointing=true"),
                                           ("rollouts", "train.per_device_train_batch_size")])
def test_out_of_memory_names_the_settings_that_lower_it(tmp_path, monkeypatch, phase, setting):
    trainer = Trainer(build_config(recipe(tmp_path, PATTERN)))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "_optimizer_step" if phase == "update" else "_rollout", oom)
    with pytest.raises(OutOfMemory, match=f"during the {phase}") as err:
        trainer.train()
    assert setting in str(err.value) and "--dry-run" in str(err.value)
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
