"""RL on a LoRA policy: the reference is the base model (adapters off, no copy) and a resumed run
restores the adapters exactly (checkpoints keep them apart; final/ merges them)."""

from __future__ import annotations

import json

import pytest
import torch

from ddrl.config import build_config
from ddrl.models.reference import AdapterFreeView
from ddrl.registry import Registry
from ddrl.training.logger import read_metrics
from ddrl.training.trainer import Trainer
from tests.hf_fixtures import write_llada

pytest.importorskip("peft")


def recipe(model_dir, out, max_steps: int) -> dict:
    return {
        "model": {"name": "llada", "path": str(model_dir), "dtype": "float32",
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "task": {"name": "records", "data_path": str(model_dir.parent / "data.jsonl"), "test_share": 0.0,
                 "reward_funcs": ["length_share"]},
        "sampler": {"name": "block", "max_completion_length": 4, "block_length": 4, "steps": 4, "temperature": 1.0},
        "estimator": {"name": "elbo", "num_samples": 2, "mask_scheme": "antithetic"},
        "objective": {"name": "dmpo", "alpha": 0.5, "baseline": "mean"},
        "train": {"output_dir": str(out), "max_steps": max_steps, "per_device_train_batch_size": 4,
                  "num_generations": 4, "num_iterations": 1, "save_steps": 2, "learning_rate": 1e-2},
        "logging": {"report_to": ["jsonl"], "progress": False},
    }


def length_share(prompts, completions, **kw):
    return [len(c) / 16 for c in completions]


@pytest.fixture()
def setup(tmp_path):
    model_dir = tmp_path / "llada"
    write_llada(model_dir, seed=3)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"prompt": p, "response": "x"}) + "\n"
                                                 for p in ("the cat", "one two", "what is 12")))
    registry = Registry()
    registry.register("rewards", "length_share", length_share)
    return model_dir, registry


@pytest.mark.slow
def test_lora_reference_is_the_adapter_free_base_and_resume_restores_adapters(setup, tmp_path):
    model_dir, registry = setup
    full = Trainer(build_config(recipe(model_dir, tmp_path / "full", 4)), registry)
    assert isinstance(full.ref, AdapterFreeView)
    assert sum(p.numel() for p in full.ref.parameters()) == 0  # no second copy of the weights
    ids = torch.tensor([[5, 6, 7, 8]])
    base = full.ref.logits(ids).detach()
    full.train()
    # training moved the adapters, not the base the reference reads
    assert not torch.allclose(full.policy.logits(ids), base, atol=1e-5)
    assert torch.allclose(full.ref.logits(ids), base, atol=1e-6)
    # killed after step 2 (its checkpoint), then resumed: the same run
    Trainer(build_config(recipe(model_dir, tmp_path / "cut", 2)), registry).train()
    resumed = Trainer(build_config(recipe(model_dir, tmp_path / "cut", 4)), registry, resume=True)
    resumed.train()
    drop = {"elapsed"}
    strip = lambda ms: [{k: v for k, v in m.items() if k not in drop} for m in ms]  # noqa: E731
    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(tmp_path / "full"))
    merged = Registry().get("models", "llada").from_pretrained(tmp_path / "full" / "final")
    assert not merged.lora_enabled
    assert torch.allclose(merged.logits(ids), full.policy.logits(ids), atol=1e-4)
