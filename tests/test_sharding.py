"""Sharded training (FSDP2 on CPU with gloo): a 2-process sharded run equals the 1-process run,
kill + resume from sharded checkpoints is exact, the exported weights load back, LoRA shards too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import build_config
from ddrl.training.distributed import LaunchError, sharding_enabled
from ddrl.training.logger import read_metrics
from ddrl.training.trainer import Trainer
from tests.hf_fixtures import write_llada
from tests.test_trainer import PATTERN, recipe, stable

COMMON = {"num_generations": 8, "per_device_train_batch_size": 4, "save_steps": 2, "save_total_limit": 10}


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((run_dir / "final").glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _torchrun(args: list[str], port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "ddrl.cli.app", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run_two(tmp_path: Path, raw: dict, port: int) -> None:
    path = tmp_path / f"{Path(raw['train']['output_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(_torchrun(["--config", str(path), "--set", "train.num_processes=2"], port),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run_one(raw: dict) -> list[dict]:
    torch.set_num_threads(1)
    try:
        return Trainer(build_config(raw)).train().metrics
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


def _close(a: list[dict], b: list[dict], keys: tuple[str, ...]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key, x[key], y[key])


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process_resume_exactly_and_export(tmp_path):
    # one prompt per rollout batch, G = 8 over two processes: groups span the shards; DMPO's defaults
    # draw from the reference too, so the frozen reference copy is sharded and gathered as well
    steps = 8
    one = recipe(tmp_path, PATTERN, task={"num_prompts": 1},
                 train={**COMMON, "max_steps": steps, "gradient_accumulation_steps": 2, "output_dir": str(tmp_path / "one")})
    two = json.loads(json.dumps(one))
    two["train"].update(gradient_accumulation_steps=1, sharding="fsdp2", output_dir=str(tmp_path / "two"))
    single = _run_one(one)
    _run_two(tmp_path, two, 29641)

    sharded = read_metrics(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "run.json").read_text())["sharding"] == "fsdp2"
    _close(single, sharded, ("reward", "ess", "advantage_abs_mean", "loss", "grad_norm"))
    assert any(m["advantage_abs_mean"] > 0 for m in single) and all(m["grad_norm"] > 0 for m in single)
    checkpoint = tmp_path / "two" / "checkpoints" / "step-000002"
    assert (checkpoint / "sharded").is_dir() and not (checkpoint / "policy").exists()
    wa, wb = (load_file(str(tmp_path / run / "final" / "model.safetensors")) for run in ("one", "two"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)

    # killed at its first checkpoint, resumed on two processes: the same numbers bit for bit
    killed = json.loads(json.dumps(two))
    killed["train"]["output_dir"] = str(tmp_path / "killed")
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(killed))
    proc = subprocess.Popen(_torchrun(["--config", str(path)], 29642), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "step-000002"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the sharded run never reached its step-2 checkpoint"
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it was killed"
    resumed = subprocess.run(_torchrun(["--resume", str(tmp_path / "killed")], 29643), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert stable(read_metrics(tmp_path / "killed")) == stable(sharded)
    wc = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert all(torch.equal(wb[k], wc[k]) for k in wb)

    # the exported (consolidated) weights are an ordinary model directory
    out = CliRunner().invoke(app, ["sample", "--config", str(path), "--model-path", str(tmp_path / "two" / "final"),
                                   "--task", "pattern", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "completions x 4 tokens" in out.output


@pytest.mark.slow
def test_fsdp2_shards_a_lora_policy_and_exports_merged_weights(tmp_path):
    pytest.importorskip("peft")
    model_dir = tmp_path / "llada"
    write_llada(model_dir, seed=3)
    base = {
        "model": {"name": "llada", "path": str(model_dir), "dtype": "float32", "chat_template": False,
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "task": {"name": "pattern", "num_prompts": 1},
        "sampler": {"name": "block", "max_completion_length": 4, "block_length": 4, "steps": 4, "temperature": 1.0},
        "estimator": {"name": "elbo", "num_samples": 2, "mask_scheme": "antithetic"},
        "objective": {"name": "dmpo", "alpha": 0.5},
        "train": {**COMMON, "max_steps": 4, "learning_rate": 1e-2, "gradient_accumulation_steps": 2,
                  "output_dir": str(tmp_path / "one")},
        "logging": {"report_to": ["jsonl"], "progress": False},
    }
    two = json.loads(json.dumps(base))
    two["train"].update(gradient_accumulation_steps=1, sharding="fsdp2", output_dir=str(tmp_path / "two"))
    single = _run_one(base)
    _run_two(tmp_path, two, 29644)
    _close(single, read_metrics(tmp_path / "two"), ("reward", "loss", "grad_norm"))
    assert all(m["grad_norm"] > 0 for m in single)
    # the checkpoint holds the adapters and their optimizer state, not the frozen base
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(tmp_path / "two" / "checkpoints" / "step-000002" / "sharded"))
    keys = list(reader.read_metadata().state_dict_metadata)
    assert any(k.startswith("optim.state.") for k in keys) and any(k.startswith("model.") for k in keys)
    assert all(".lora_" in k for k in keys if not k.startswith("optim.param_groups")), keys[:5]
    one_w, two_w = (_final_weights(tmp_path / run) for run in ("one", "two"))
    assert one_w.keys() == two_w.keys() and not any(".lora_" in k for k in one_w)
    assert all(torch.allclose(one_w[k], two_w[k], atol=1e-5) for k in one_w)


@pytest.mark.parametrize(
    "configured,processes,env,expected",
    [
        ("none", 2, {}, False),
        ("fsdp2", 2, {}, True),
        ("fsdp2", 1, {}, False),  # nothing to shard
        ("none", 2, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, True),  # an accelerate FSDP2 config
    ],
)
def test_sharding_follows_the_recipe_and_the_accelerate_launch(configured, processes, env, expected):
    assert sharding_enabled(configured, processes, env) is expected


@pytest.mark.parametrize(
    "env,message",
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version: 2"),
        ({"ACCELERATE_USE_FSDP": "true"}, "fsdp_version: 2"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed is not supported"),
    ],
)
def test_unsupported_launches_fail_with_what_to_use_instead(env, message):
    with pytest.raises(LaunchError, match=message):
        sharding_enabled("none", 2, env)


def test_a_sharded_checkpoint_does_not_resume_unsharded(tmp_path):
    from ddrl.training.checkpoint import load_checkpoint

    raw = recipe(tmp_path, PATTERN, train={"max_steps": 2, "save_steps": 2})
    trainer = Trainer(build_config(raw))
    (tmp_path / "ckpt" / "sharded").mkdir(parents=True)
    with pytest.raises(ValueError, match="same train.sharding"):
        load_checkpoint(tmp_path / "ckpt", trainer.policy, trainer.optimizer)


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize("name,kind,processes", [("ddp_8gpu", "MULTI_GPU", 8), ("fsdp2_8gpu", "FSDP", 8),
                                                  ("ddp_multinode", "MULTI_GPU", 16), ("fsdp2_multinode", "FSDP", 16)])
def test_the_shipped_accelerate_configs_load(name, kind, processes):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.name == kind and config.num_processes == processes
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2  # what ddrl requires (FSDP1 is refused)
    launch = next(line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if "accelerate launch" in line)
    assert f"--config_file configs/accelerate/{name}.yaml" in launch and "ddrl.cli.app train" in launch


@pytest.mark.slow
def test_an_accelerate_fsdp2_launch_shards_and_matches_one_process(tmp_path):
    # the shipped 8-GPU config, on 2 CPU processes: accelerate's FSDP2 launch turns ddrl's sharding on
    one = recipe(tmp_path, PATTERN, task={"num_prompts": 1},
                 train={**COMMON, "max_steps": 4, "gradient_accumulation_steps": 2, "output_dir": str(tmp_path / "one")})
    single = _run_one(one)
    path = tmp_path / "acc.yaml"
    acc = json.loads(json.dumps(one))
    acc["train"].update(gradient_accumulation_steps=1, output_dir=str(tmp_path / "acc"))
    path.write_text(yaml.safe_dump(acc))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp2_8gpu.yaml"),
           "--num_processes", "2", "--main_process_port", "29645", "--mixed_precision", "no",
           "-m", "ddrl.cli.app", "train", "--config", str(path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "acc" / "run.json").read_text())["sharding"] == "fsdp2"
    _close(single, read_metrics(tmp_path / "acc"), ("reward", "loss", "grad_norm"))
