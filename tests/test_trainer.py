"""The trainer: every objective from the CLI, exact resume, 2-process equivalence, guards."""

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
from ddrl.config import ConfigError, build_config
from ddrl.registry import Registry
from ddrl.training.distributed import LaunchError, check_world_size
from ddrl.training.logger import read_metrics
from ddrl.training.trainer import Trainer, TrainingDiverged

SMALL = {
    "model": {"name": "tiny", "architecture": {"d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_hidden": 64}},
    "task": {"name": "countdown", "variant": "toy", "num_generated_train": 64, "num_generated_test": 8},
    "sampler": {"name": "block", "max_completion_length": 8, "block_length": 8, "steps": 8, "temperature": 1.0},
    "estimator": {"name": "elbo", "num_samples": 2, "mask_scheme": "antithetic"},
    "objective": {"name": "dmpo", "alpha": 0.5},
    "train": {"max_steps": 4, "per_device_train_batch_size": 8, "num_generations": 4, "num_iterations": 2,
              "save_steps": 2, "learning_rate": 1e-3},
    "logging": {"report_to": ["jsonl"], "progress": False},
}
# A token-level task whose reward varies from the first step, so that runs really update weights.
PATTERN = {
    "model": {"name": "tiny", "charset": None,
              "architecture": {"vocab_size": 5, "d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_hidden": 64}},
    "task": {"name": "pattern", "num_prompts": 4},
    "sampler": {"name": "block", "max_completion_length": 4, "block_length": 4, "steps": 4, "temperature": 1.0},
}
VOLATILE = {"elapsed"}


def recipe(tmp_path: Path, base: dict | None = None, **sections) -> dict:
    raw = json.loads(json.dumps(SMALL))
    raw.update(json.loads(json.dumps(base or {})))
    for section, values in sections.items():
        switched = "name" in values and values["name"] != raw.get(section, {}).get("name")
        raw[section] = dict(values) if switched else {**raw.get(section, {}), **values}
    raw["train"].setdefault("output_dir", str(tmp_path / "run"))
    return raw


def stable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in VOLATILE} for m in metrics]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.parametrize("objective", ["dmpo", "diffu_grpo", "coupled_grpo"])
def test_cli_trains_each_objective_on_the_tiny_model(tmp_path, objective):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path)))
    result = CliRunner().invoke(
        app, ["train", "--config", str(path), "--objective", objective, "--set", "train.max_steps=2"]
    )
    assert result.exit_code == 0, result.output
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    # switching the objective by flag brings the estimator it was published with
    expected = {"dmpo": "elbo", "diffu_grpo": "one_step", "coupled_grpo": "coupled"}[objective]
    assert config["objective"]["name"] == objective and config["estimator"]["name"] == expected
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def digit_share(prompts, completions, **kw):
    """A reward that varies between completions of a random model (the task's own is all 0.1)."""
    return [sum(c.isdigit() for c in text) / max(1, len(text)) for text in completions]


def test_training_changes_the_weights_and_logs_trl_metric_names(tmp_path):
    registry = Registry()
    registry.register("rewards", "digit_share", digit_share)
    raw = recipe(tmp_path, objective={"name": "diffu_grpo"}, estimator={"name": "one_step"},
                 task={"reward_funcs": ["digit_share"]})
    trainer = Trainer(build_config(raw), registry)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    result = trainer.train()
    after = trainer.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for key in ("loss", "reward", "reward_std", "accuracy", "completion_length", "grad_norm", "learning_rate", "kl",
                "clip_ratio", "frac_reward_zero_std"):
        assert key in result.metrics[-1], key


def test_a_rollout_batch_serves_num_iterations_steps(tmp_path):
    cfg = build_config(recipe(tmp_path, train={"max_steps": 6, "num_iterations": 3, "save_steps": 3}))
    metrics = Trainer(cfg).train().metrics
    # completions are generated at steps 1 and 4 only; the rewards of a rollout batch are reused
    assert [m["num_completions"] for m in metrics] == [8, 8, 8, 16, 16, 16]
    assert metrics[0]["reward"] == metrics[1]["reward"] == metrics[2]["reward"]
    assert metrics[0]["ess"] == metrics[2]["ess"]  # weights frozen over the inner iterations


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        raw = recipe(tmp_path, train={"output_dir": str(tmp_path / name), "seed": seed})
        runs.append(stable(Trainer(build_config(raw)).train().metrics))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.slow
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    raw = recipe(tmp_path, PATTERN, train={"max_steps": 8, "save_steps": 2, "save_total_limit": 10})
    raw["train"]["output_dir"] = str(tmp_path / "whole")
    whole = Trainer(build_config(raw)).train()

    raw["train"]["output_dir"] = str(tmp_path / "killed")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "ddrl.cli.app", "train", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # killed at the first checkpoint: six more steps to go leave a wide margin before it could finish
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-000002"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the run never reached its step-2 checkpoint"
    assert not (tmp_path / "killed" / "final").exists(), "the process finished before it was killed"

    resumed = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "killed")])
    assert resumed.exit_code == 0, resumed.output
    assert stable(read_metrics(tmp_path / "killed")) == stable(whole.metrics)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(m["grad_norm"] > 0 for m in whole.metrics)  # the run really trained


def _launch_two_processes(tmp_path: Path, raw: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "recipe2.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           "-m", "ddrl.cli.app", "train", "--config", str(path), "--set", "train.num_processes=2"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_reproduce_one_process_with_the_same_global_batch(tmp_path):
    # one prompt per rollout batch, G = 8 completions split over two chunks of 4: each group spans
    # both processes, so the weights are only right if they are normalised over the gathered rows
    common = {"max_steps": 4, "num_generations": 8, "per_device_train_batch_size": 4, "save_steps": 2}
    one = recipe(tmp_path, PATTERN, task={"num_prompts": 1},
                 train={**common, "gradient_accumulation_steps": 2, "output_dir": str(tmp_path / "one")})
    two = recipe(tmp_path, PATTERN, task={"num_prompts": 1},
                 train={**common, "gradient_accumulation_steps": 1, "output_dir": str(tmp_path / "two")})
    torch.set_num_threads(1)
    try:
        single = Trainer(build_config(one)).train().metrics
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    proc = _launch_two_processes(tmp_path, two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = read_metrics(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "run.json").read_text())["num_processes"] == 2
    assert len(double) == len(single) == 4
    for a, b in zip(single, double):
        assert b["num_completions"] == a["num_completions"] == (8 if a["step"] <= 2 else 16)
        for key in ("reward", "ess", "advantage_abs_mean", "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a[key], b[key])
    assert any(m["advantage_abs_mean"] > 0 for m in single)  # the comparison is not vacuous
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


@pytest.mark.parametrize(
    "seen,expected,env,message",
    [
        (1, None, {"WORLD_SIZE": "2"}, "WORLD_SIZE=2"),
        (1, None, {"MASTER_PORT": "29500", "ACCELERATE_USE_CPU": "True"}, "runs a single process"),
        (2, 4, {"WORLD_SIZE": "2"}, "expected 4 processes"),
    ],
)
def test_a_world_size_different_from_the_launch_fails_loudly(seen, expected, env, message):
    with pytest.raises(LaunchError, match=message):
        check_world_size(seen, expected, env)
    check_world_size(2, 2, {"WORLD_SIZE": "2"})  # consistent: no error


def test_non_finite_losses_skip_the_update_and_stop_the_run(tmp_path):
    registry = Registry()

    def broken(prompts, completions, **kw):
        return [float("inf")] * len(completions)

    registry.register("rewards", "broken", broken)
    raw = recipe(tmp_path, task={"reward_funcs": ["broken"]}, train={"max_bad_steps": 3, "max_steps": 10, "save_steps": 10})
    trainer = Trainer(build_config(raw), registry)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    assert [m["skipped"] for m in read_metrics(tmp_path / "run")] == [True, True]


def test_an_existing_run_is_never_overwritten(tmp_path):
    cfg = build_config(recipe(tmp_path, train={"max_steps": 2}))
    Trainer(cfg).train()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg)


def test_incompatible_sampler_is_reported_before_training(tmp_path):
    raw = recipe(tmp_path, objective={"log_ratio": "path"})
    with pytest.raises(ConfigError, match="ancestral"):
        Trainer(build_config(raw))


def test_gradient_checkpointing_on_a_model_that_does_not_declare_it_is_a_config_error(tmp_path):
    from ddrl.models.tiny import TinyPolicy

    class Plain(TinyPolicy):
        supports_gradient_checkpointing = False

    registry = Registry()
    registry.register("models", "plain", Plain)
    raw = recipe(tmp_path, train={"gradient_checkpointing": True})
    raw["model"]["name"] = "plain"
    with pytest.raises(ConfigError, match="'plain' does not support gradient checkpointing"):
        Trainer(build_config(raw, registry=registry), registry)
    raw["model"]["name"] = "tiny"  # a model that declares it: the trainer switches it on
    trainer = Trainer(build_config(raw, registry=registry), registry)
    assert trainer.policy.net.gradient_checkpointing
    # the reference is a frozen copy of the starting weights, not the trained policy
    assert trainer.ref is not trainer.policy and not any(p.requires_grad for p in trainer.ref.parameters())
    assert all(torch.equal(a, b) for a, b in zip(trainer.ref.parameters(), trainer.policy.parameters()))


def test_batch_sizes_that_cannot_form_whole_groups_are_rejected(tmp_path):
    raw = recipe(tmp_path, train={"per_device_train_batch_size": 6, "num_generations": 4})
    with pytest.raises(ValueError, match="multiple of num_generations"):
        Trainer(build_config(raw))


def test_tensorboard_events_mirror_the_jsonl_metrics(tmp_path):
    pytest.importorskip("tensorboard")  # a dev dependency: CI has it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = recipe(tmp_path, logging={"report_to": ["jsonl", "tensorboard"], "progress": False},
                 train={"max_steps": 2})
    Trainer(build_config(raw)).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    metrics = read_metrics(tmp_path / "run")
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    assert losses == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in metrics]
