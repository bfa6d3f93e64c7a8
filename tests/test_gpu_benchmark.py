"""`benchmarks/gpu.py`: the GPU benchmark's CPU dry run end to end, its FLOP and MFU arithmetic
against hand counts, and its out-of-memory, skip and no-CUDA messages."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from itertools import product
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# a small LLaDA config with grouped keys/values (2 kv heads of 4), so k/v projections are narrower
SMALL = {"model_type": "llada", "n_layers": 3, "rope_theta": 500000.0, "d_model": 48, "n_heads": 4, "n_kv_heads": 2,
         "mlp_hidden_size": 80, "vocab_size": 300, "embedding_size": 300, "mask_token_id": 299}


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ddrl_gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def numbers(node: Any) -> list[float]:
    if isinstance(node, bool):
        return []
    if isinstance(node, (int, float)):
        return [float(node)]
    if isinstance(node, dict):
        return [x for v in node.values() for x in numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in numbers(v)]
    return []


def test_dry_run_exercises_every_section_and_prints_its_result_line(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                          check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("Memory plan:")  # the plan comes first
    last = lines[-1]
    assert last.startswith("result: device=cpu ")
    fields = dict(item.split("=", 1) for item in last.removeprefix("result: ").split())
    assert set(fields) == {"device", "fast_vs_block_tokens_per_s", "dmpo_lora_update_s", "mfu_update",
                           "dmpo_vs_diffu_grpo_update_time"}
    for key in ("fast_vs_block_tokens_per_s", "dmpo_lora_update_s", "mfu_update", "dmpo_vs_diffu_grpo_update_time"):
        assert math.isfinite(float(fields[key])) and float(fields[key]) > 0, last

    results = json.loads(out.read_text())
    assert set(results) >= {"device", "settings", "plan", "samplers", "lora_update", "update_per_rollout_batch",
                            "fsdp_step", "result"}
    assert all(math.isfinite(x) for x in numbers(results))
    assert "nominal" in results["device"]["peak_note"]
    assert {(r["sampler"], r["batch"], r["length"]) for r in results["samplers"]} == set(
        product(("block", "fast"), (1, 2), (16, 32)))
    for row in results["samplers"]:
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["mfu"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * row["length"] / row["seconds"])
    for key in ("lora_update", "fsdp_step"):
        row = results[key]
        assert row["status"] == "ok" and row["seconds"] > 0 and row["mfu"] > 0 and row["peak_gib"] > 0, row
    assert results["fsdp_step"]["precision"] in ("mixed", "pure")
    for name in ("parameters", "lora_parameters", "lora_gradients", "lora_adamw_states",
                 "activations_per_sample_no_ckpt", "activations_per_sample_ckpt"):
        assert results["plan"][name]["gib"] > 0

    # the update ran exactly what DMPO (published) needs: old and ref scored on 4 ELBO views each
    # without gradient, the loss on 4 views with gradient; the MFU follows from those counts
    settings, update = results["settings"], results["lora_update"]
    rows, tokens = settings["update_batch"], settings["prompt_length"] + settings["update_length"]
    assert update["inference_tokens"] == 2 * 4 * rows * tokens
    assert update["training_tokens"] == 4 * rows * tokens
    per_token = hand_forward_flops(settings["width"], settings["layers"], tokens)
    flops = per_token * (update["inference_tokens"] + 3 * update["training_tokens"])
    assert update["model_tflops"] == pytest.approx(flops / 1e12)
    peak = results["device"]["peak_tflops"]
    assert update["mfu"] == pytest.approx(flops / update["seconds"] / (peak * 1e12))
    assert results["result"]["mfu_update"] == pytest.approx(update["mfu"])
    # the update's two parts, each synchronised: scoring (old, ref, weights) and step (loss, backward, AdamW)
    assert 0 < update["score_seconds"] and 0 < update["step_seconds"]
    assert update["score_seconds"] + update["step_seconds"] <= update["seconds"]

    # time per rollout batch as benchmarks/memory.py counts it: view sets scored x one set's scoring
    # + mu x one step; DMPO (defaults) 1 set, mu 4; published DMPO the same score and step, mu 8;
    # diffu-GRPO 12 sets (old and ref on each inner iteration's views), mu 12
    comparison = results["update_per_rollout_batch"]
    assert comparison["status"] == "ok", comparison
    timed_updates, per_batch = comparison["updates"], comparison["settings"]
    expected = {"dmpo": ("dmpo", 1, 4), "dmpo_published": ("dmpo", 1, 8), "diffu_grpo": ("diffu_grpo", 12, 12)}
    assert set(per_batch) == set(expected)
    for name, (timed_name, score_sets, mu) in expected.items():
        part, row = timed_updates[timed_name], per_batch[name]
        assert part["score_seconds"] > 0 and part["step_seconds"] > 0
        assert part["score_seconds"] + part["step_seconds"] <= part["seconds"]
        assert (row["score_sets"], row["mu"]) == (score_sets, mu), name
        assert row["rollout_batch_seconds"] == pytest.approx(
            score_sets * part["score_seconds"] + mu * part["step_seconds"]), name
    seconds = {name: row["rollout_batch_seconds"] for name, row in per_batch.items()}
    assert comparison["dmpo_vs_diffu_grpo_update_time"] == pytest.approx(seconds["dmpo"] / seconds["diffu_grpo"])
    assert comparison["dmpo_published_vs_diffu_grpo_update_time"] == pytest.approx(
        seconds["dmpo_published"] / seconds["diffu_grpo"])
    assert results["result"]["dmpo_vs_diffu_grpo_update_time"] == pytest.approx(seconds["dmpo"] / seconds["diffu_grpo"])
    assert float(fields["dmpo_vs_diffu_grpo_update_time"]) == pytest.approx(
        seconds["dmpo"] / seconds["diffu_grpo"], abs=0.006)
    # what each timed update ran: DMPO (defaults) the published update's views; diffu-GRPO (one_step)
    # one view set scored by old and ref without gradient, the current policy on it with gradient
    dmpo, grpo = timed_updates["dmpo"], timed_updates["diffu_grpo"]
    assert (dmpo["objective"], dmpo["estimator"], grpo["objective"], grpo["estimator"]) == (
        "dmpo", "elbo", "diffu_grpo", "one_step")
    assert (dmpo["inference_tokens"], dmpo["training_tokens"]) == (2 * 4 * rows * tokens, 4 * rows * tokens)
    assert (grpo["inference_tokens"], grpo["training_tokens"]) == (2 * rows * tokens, rows * tokens)


def hand_forward_flops(width: dict[str, int], layers: int, context: int) -> float:
    """FLOPs of one token's forward pass, counted from the shapes of LLaDA's matmuls."""
    d, h, vocab = width["d_model"], width["mlp_hidden_size"], width["embedding_size"]
    kv = d // width["n_heads"] * width["n_kv_heads"]
    attention_proj = d * d + d * kv + d * kv + d * d  # q, k, v, o
    mlp = d * h + d * h + h * d  # gate, up, down
    head = d * vocab
    return 2 * (layers * (attention_proj + mlp) + head) + layers * (2 * context * d + 2 * context * d)  # QK^T, AV


def test_flop_count_matches_a_hand_count_and_the_executed_matmuls(gpu):
    # LLaDA-8B at a 320-token canvas, worked out by hand
    width_8b = {k: v for k, v in gpu.WIDTH_8B.items()}
    published = {"model_type": "llada", "n_layers": 32, **width_8b}
    assert 32 * (4 * 4096**2 + 3 * 4096 * 12288) + 4096 * 126464 == 7_497_318_400
    assert gpu.forward_flops_per_token(published, 320) == 2 * 7_497_318_400 + 4 * 320 * 4096 * 32 == 15_162_408_960
    assert gpu.parameter_counts(published, lora_r=128)["lora"] == 32 * 128 * (3 * (4096 + 4096) + (4096 + 12288))
    assert gpu.parameter_counts(published)["total"] == 8_015_581_184
    # grouped keys/values
    assert gpu.forward_flops_per_token(SMALL, 20) == hand_forward_flops(SMALL, 3, 20)
    # a hand MFU case: 51,200 token-forwards of 15.16 GFLOP in 2 s on a 989 TFLOP/s device
    flops = gpu.model_flops(published, 320, inference_tokens=20480, training_tokens=10240)
    assert flops == 15_162_408_960 * 51_200
    assert gpu.mfu(flops, 2.0, 989.0) == pytest.approx(15_162_408_960 * 51_200 / 2.0 / 989e12)
    assert gpu.mfu(flops, 2.0, None) is None

    # the built model: parameter count, and torch's FLOP counter on a full forward (eager
    # attention, so that the scores and values are matmuls it counts; the head on every position)
    from torch.utils.flop_counter import FlopCounterMode

    from ddrl.models.llada import LLaDAPolicy

    policy = LLaDAPolicy.random(SMALL).eval()
    assert gpu.parameter_counts(SMALL)["total"] == sum(p.numel() for p in policy.parameters())
    policy.model.config._attn_implementation = "eager"
    ids = torch.randint(0, SMALL["mask_token_id"], (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        policy(ids)
    assert counter.get_total_flops() == 2 * 20 * gpu.forward_flops_per_token(SMALL, 20)


def test_lora_parameter_count_matches_the_adapters(gpu):
    pytest.importorskip("peft")
    from ddrl.models.llada import LLaDAPolicy
    from ddrl.models.lora import LoraSettings

    policy = LLaDAPolicy.random(SMALL)
    policy.enable_lora(LoraSettings(r=4, alpha=8))
    trained = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert gpu.parameter_counts(SMALL, lora_r=4)["lora"] == trained


def test_peak_table_matches_device_names(gpu):
    assert gpu.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert gpu.peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert gpu.peak_tflops_for("NVIDIA H200") == 989
    assert gpu.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312
    assert gpu.peak_tflops_for("NVIDIA L40S") == 362
    assert gpu.peak_tflops_for("NVIDIA A10") == 125
    assert gpu.peak_tflops_for("NVIDIA GeForce RTX 4090") == 165
    assert gpu.peak_tflops_for("NVIDIA A10G") is None  # not an A10: unknown, MFU needs --peak-tflops
    assert gpu.peak_tflops_for("Tesla T4") is None


def test_update_time_per_rollout_batch_is_view_sets_times_score_plus_mu_times_step(gpu):
    # hand figures: DMPO scores in 2 s and steps in 1 s, diffu-GRPO 0.5 s and 0.25 s
    out = gpu.per_rollout_batch({"dmpo": {"score_seconds": 2.0, "step_seconds": 1.0},
                                 "diffu_grpo": {"score_seconds": 0.5, "step_seconds": 0.25}})
    seconds = {name: row["rollout_batch_seconds"] for name, row in out["settings"].items()}
    assert seconds == pytest.approx({"dmpo": 2 + 4 * 1, "dmpo_published": 2 + 8 * 1, "diffu_grpo": 12 * 0.5 + 12 * 0.25})
    assert out["dmpo_vs_diffu_grpo_update_time"] == pytest.approx(6 / 9)
    assert out["dmpo_published_vs_diffu_grpo_update_time"] == pytest.approx(10 / 9)
    # a missing update leaves its settings and the ratios unmeasured, and the result line says so
    half = gpu.per_rollout_batch({"dmpo": {"score_seconds": 2.0, "step_seconds": 1.0}})
    assert half["settings"]["diffu_grpo"]["rollout_batch_seconds"] is None
    assert half["dmpo_vs_diffu_grpo_update_time"] is None
    results = {"device": {"name": "NVIDIA H100 80GB HBM3"}, "samplers": [], "lora_update": None,
               "update_per_rollout_batch": {"status": "OOM", "message": "out of memory in ..."}}
    assert gpu.result_line(results).endswith(" dmpo_vs_diffu_grpo_update_time=n/a")
    assert gpu.update_time_ratio({"status": "ok", **out}) == pytest.approx(6 / 9)
    assert gpu.update_time_ratio(None) is None


def test_out_of_memory_is_recorded_with_the_setting_to_lower(gpu, capsys):
    def explode() -> dict[str, Any]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    row = gpu.guarded("block at batch 32, L 512", "lower the batch size (--batches, now 32)", explode)
    assert row["status"] == "OOM"
    assert "block at batch 32, L 512" in row["message"] and "--batches" in row["message"]
    assert "--batches" in capsys.readouterr().out
    with pytest.raises(ValueError):  # anything else is a bug and propagates
        gpu.guarded("x", "y", lambda: (_ for _ in ()).throw(ValueError("bug")))


def dry_settings(gpu: ModuleType, *argv: str) -> Any:
    return gpu.settings_from(gpu.parse_args(["--dry-run", *argv]))


def test_full_step_is_skipped_with_the_memory_it_needs(gpu, monkeypatch):
    monkeypatch.setattr(gpu, "free_gib", lambda device: (0.25, 0.5))
    row = gpu.bench_fsdp_step(dry_settings(gpu))
    assert row["status"] == "skipped"
    assert row["message"].startswith("skipped: needs about ") and "device has 0 GiB free" in row["message"]
    assert "--layers" in row["message"]


def test_full_step_falls_back_to_pure_when_mixed_runs_out_of_memory(gpu, monkeypatch):
    tried = []

    def step(settings: Any, precision: str) -> dict[str, Any]:
        tried.append(precision)
        if precision == "mixed":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"seconds": 1.0, "first_seconds": 1.0, "peak_gib": 1.0, "model_tflops": 1.0, "mfu": 0.5}

    monkeypatch.setattr(gpu, "fsdp_step", step)
    row = gpu.bench_fsdp_step(dry_settings(gpu))
    assert tried == ["mixed", "pure"] and row["status"] == "ok" and row["precision"] == "pure"


def test_plan_only_prints_the_8b_plan_without_a_device(gpu, capsys):
    assert gpu.main(["--plan-only"]) == 0
    out = capsys.readouterr().out
    assert "| parameters | 8,015,581,184 | 14.93 |" in out and "| lora_parameters | 167,772,160 |" in out
    assert "[gpu]" not in out and "result:" not in out  # nothing ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_without_cuda_it_says_to_use_the_dry_run():
    done = subprocess.run([sys.executable, str(SCRIPT)], check=False, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode != 0
    assert "no CUDA device: run with --dry-run for the CPU code path" in done.stderr
