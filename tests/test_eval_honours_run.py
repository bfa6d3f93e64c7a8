"""`ddrl eval RUN` honours the run (issue 16, item 1): its own eval settings and sampler, a
registered sampler by name, records keyed by the weights evaluated, one leaderboard row per run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml
from typer.testing import CliRunner

import ddrl.cli.eval as eval_cli
from ddrl.cli.app import app
from ddrl.evaluation.leaderboard import build_leaderboard
from ddrl.evaluation.results import ResultStore, record_key
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.registry import Registry
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig

ARCH = {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64, "max_seq_len": 64}
RECIPE = {
    "model": {"name": "tiny", "architecture": ARCH},
    "task": {"name": "countdown", "variant": "toy", "num_generated_train": 16, "num_generated_test": 8},
    "sampler": {"name": "block", "max_completion_length": 8, "block_length": 8, "steps": 8, "temperature": 1.0},
    "estimator": {"name": "elbo", "num_samples": 2, "mask_scheme": "antithetic"},
    "objective": {"name": "dmpo", "alpha": 0.5},
    "train": {"max_steps": 1, "per_device_train_batch_size": 8, "num_generations": 4, "save_steps": 1,
              "learning_rate": 1e-2},
    # the run's own evaluation: one length (the toy task alone would say 8 and 16), 4 examples,
    # DMPO's steps = length, blocks of 4, two seeds
    "eval": {"lengths": [8], "num_examples": 4, "steps_per_length": 1.0, "block_length": 4, "seeds": [0, 1],
             "batch_size": 4},
    "logging": {"report_to": ["jsonl"], "progress": False},
}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run made by `ddrl train` (one step)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    result = invoke("train", "--config", root / "recipe.yaml", "--output-dir", root / "run")
    assert result.exit_code == 0, result.output
    return root / "run"


def make_run(path: Path, start: Path | None = None, seed: int = 0, **sections) -> Path:
    """A run directory by hand: config.yaml as `ddrl train` writes it and a final policy."""
    raw = json.loads(json.dumps(RECIPE))
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    if start is not None:
        raw["model"] = {"name": "tiny", "path": str(start)}
    raw["train"]["output_dir"] = str(path)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(raw))
    TinyPolicy.fresh(TinyArchitecture(**ARCH), CharTokenizer(), seed=seed).save_pretrained(path / "final")
    return path


# ------------------------------------------------------------------------------------------------
# the run's own eval settings; lengths that cannot fit the model are refused up front


def test_a_tiny_run_is_evaluated_with_its_own_eval_settings(trained, tmp_path):
    results = tmp_path / "r.jsonl"
    result = invoke("eval", trained, "--results", results)
    assert result.exit_code == 0, result.output
    recs = records(results)
    # before: the task's 8 and 16, every test example, d1's steps = L/2 in blocks of 32, seed 0 only
    assert sorted((r["length"], r["seed"]) for r in recs) == [(8, 0), (8, 1)]
    assert {(r["num_examples"], r["steps"], r["block_length"]) for r in recs} == {(4, 8, 4)}
    assert recs[0]["config"]["eval"]["num_examples"] == 4
    # a flag still overrides the run
    again = invoke("eval", trained, "--results", results, "--seed", "3", "--set", "eval.num_examples=2")
    assert again.exit_code == 0, again.output
    assert [(r["seed"], r["num_examples"]) for r in records(results)[2:]] == [(3, 2)]


def test_a_length_that_cannot_fit_the_model_is_refused_before_anything_runs(tmp_path):
    results = tmp_path / "r.jsonl"
    run = make_run(tmp_path / "run", eval={"lengths": [8, 128]})  # max_seq_len 64
    result = invoke("eval", run, "--results", results)
    # before: `ValueError: sequence length 138 exceeds max_seq_len 64` from inside the model
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
    text = " ".join(result.output.split())
    assert "generation length 128" in text and "maximum sequence length 64" in text
    assert "the longest length that fits is" in text
    assert not results.exists()  # refused up front: not even L=8 ran
    flag = invoke("eval", run, "--results", results, "--length", "128")
    assert flag.exit_code == 2 and "generation length 128" in " ".join(flag.output.split())


# ------------------------------------------------------------------------------------------------
# the sampler comes from the registry


def test_the_sampler_flag_picks_a_registered_sampler(tmp_path):
    results = tmp_path / "r.jsonl"
    run = make_run(tmp_path / "run")
    block = invoke("eval", run, "--results", results, "--seed", "0")
    # threshold 0: fast reveals a whole block per forward, so its NFE shows that it decoded
    fast = invoke("eval", run, "--results", results, "--seed", "0", "--sampler", "fast", "--set", "sampler.threshold=0.0")
    assert block.exit_code == 0, block.output
    assert fast.exit_code == 0, fast.output  # before: "No such option: --sampler"
    by_block, by_fast = records(results)
    assert by_block["sampler"]["name"] == "block" and by_block["sampler_id"] == "block"
    assert by_fast["sampler"]["name"] == "fast" and by_fast["sampler"]["threshold"] == 0.0
    assert by_fast["sampler_id"].startswith("fast@")  # its settings are part of what was evaluated
    assert by_fast["nfe"] < by_block["nfe"] == 8  # 1 batch x 8 steps for block; fast needs fewer forwards
    assert by_fast["sampler"]["temperature"] == 0.0  # eval.temperature, not the run's training 1.0
    board = invoke("leaderboard", "--results", results)
    assert board.exit_code == 0, board.output
    columns = (tmp_path / "leaderboard.md").read_text().splitlines()[0]
    assert "countdown[toy] L=8 s=L |" in columns and f"countdown[toy] L=8 s=L {by_fast['sampler_id']}" in columns


def test_the_runs_own_sampler_decodes_and_protocol_fields_come_from_eval(tmp_path):
    results = tmp_path / "r.jsonl"
    run = make_run(tmp_path / "run", sampler={"name": "fast", "threshold": 0.0})
    result = invoke("eval", run, "--results", results, "--seed", "0")
    assert result.exit_code == 0, result.output
    (rec,) = records(results)
    assert rec["sampler"]["name"] == "fast" and rec["sampler"]["threshold"] == 0.0
    assert rec["sampler"]["max_completion_length"] == 8 and rec["sampler"]["block_length"] == 4
    wrong = invoke("eval", run, "--results", results, "--set", "sampler.steps=3")
    assert wrong.exit_code == 2 and "eval.steps_per_length" in wrong.output
    unknown = invoke("eval", run, "--results", results, "--sampler", "fastt")
    assert unknown.exit_code == 2 and "did you mean 'fast'?" in unknown.output


class CountingConfig(BlockSamplerConfig):
    name: str = "counting"


class CountingSampler(BlockSampler):
    """A plugin's sampler: `block` that counts its calls."""

    Config = CountingConfig
    calls = 0

    def sample(self, *args, **kwargs):
        type(self).calls += 1
        return super().sample(*args, **kwargs)


def test_a_plugins_sampler_is_used_by_name(tmp_path, monkeypatch):
    def registry() -> Registry:
        reg = Registry()
        reg.register("samplers", "counting", CountingSampler, distribution="ddrl-counting")
        return reg

    monkeypatch.setattr(eval_cli, "Registry", registry)
    CountingSampler.calls = 0
    results = tmp_path / "r.jsonl"
    result = invoke("eval", make_run(tmp_path / "run"), "--results", results, "--seed", "0", "--sampler", "counting")
    assert result.exit_code == 0, result.output
    assert CountingSampler.calls == 1  # 4 examples, one batch
    assert records(results)[0]["sampler_id"] == "counting"


# ------------------------------------------------------------------------------------------------
# records are keyed by the weights evaluated


def test_reevaluation_after_more_training_is_not_skipped_and_an_identical_one_is(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    results = tmp_path / "r.jsonl"
    args = ["eval", run, "--results", results, "--seed", "0", "--length", "8"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    same = invoke(*args)
    assert same.exit_code == 0 and "skip (recorded)" in same.output
    assert len(records(results)) == 1
    more = invoke("train", "--resume", run, "--set", "train.max_steps=2")
    assert more.exit_code == 0, more.output
    after = invoke(*args)
    # before: "skip (recorded)" and the stale figure of step 1 kept
    assert after.exit_code == 0 and "skip (recorded)" not in after.output, after.output
    old, new = records(results)
    assert old["weights"].startswith("sha256:") and new["weights"] != old["weights"]
    assert old["policy"] == new["policy"]
    # the table keeps the run's newest evaluation only
    assert ResultStore(results).latest() == [new]
    assert "skip (recorded)" in invoke(*args).output  # and that one is recorded now


def test_records_without_a_weights_hash_still_load_and_never_match(tmp_path):
    run = make_run(tmp_path / "run")
    results = tmp_path / "r.jsonl"
    assert invoke("eval", run, "--results", results, "--seed", "0").exit_code == 0
    (rec,) = records(results)
    legacy = {k: v for k, v in rec.items() if k not in ("weights", "run", "sampler_id", "sampler")}
    assert record_key(legacy).as_tuple() != record_key(rec).as_tuple()
    results.write_text(json.dumps(legacy) + "\n")  # as written before records carried the hash
    again = invoke("eval", run, "--results", results, "--seed", "0")
    assert again.exit_code == 0 and "skip (recorded)" not in again.output
    assert len(records(results)) == 2
    assert invoke("leaderboard", "--results", results).exit_code == 0


# ------------------------------------------------------------------------------------------------
# the leaderboard labels each run distinctly


def test_two_runs_started_from_folders_both_named_final_are_two_rows(tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        TinyPolicy.fresh(TinyArchitecture(**ARCH), CharTokenizer(), seed=seed).save_pretrained(tmp_path / name / "final")
    run_a = make_run(tmp_path / "run-a", start=tmp_path / "a" / "final", seed=3)
    run_b = make_run(tmp_path / "run-b", start=tmp_path / "b" / "final", seed=4)
    results = tmp_path / "r.jsonl"
    result = invoke("eval", run_a, run_b, "--results", results)  # the runs' seeds: 0 and 1
    assert result.exit_code == 0, result.output
    board = build_leaderboard(ResultStore(results).latest())
    # before: one row "tiny[final] / dmpo" averaging both runs as if they were four seeds
    assert board.rows == ["tiny[final] / dmpo (run-a)", "tiny[final] / dmpo (run-b)"]
    assert {cell.n for cell in board.cells.values()} == {2}  # each run's two seeds, together
    cli = invoke("leaderboard", "--results", results)
    assert cli.exit_code == 0, cli.output
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| tiny[final] / dmpo (run-a) |" in md and "| tiny[final] / dmpo (run-b) |" in md


def test_runs_of_one_name_are_told_apart_by_their_weights(tmp_path):
    start = tmp_path / "base" / "final"
    TinyPolicy.fresh(TinyArchitecture(**ARCH), CharTokenizer(), seed=1).save_pretrained(start)
    first = make_run(tmp_path / "x" / "run", start=start, seed=3)
    second = make_run(tmp_path / "y" / "run", start=start, seed=4)
    results = tmp_path / "r.jsonl"
    assert invoke("eval", first, second, "--results", results, "--seed", "0").exit_code == 0
    recs = records(results)
    board = build_leaderboard(recs)
    assert len(board.rows) == 2
    assert {row.rsplit("@", 1)[1] for row in board.rows} == {r["weights"][len("sha256:"):][:8] for r in recs}
    # the same weights evaluated twice at one place are one row whatever the records' order
    assert len(build_leaderboard([recs[0], {**recs[0], "seed": 1}]).rows) == 1


def test_weights_hash_is_deterministic_and_follows_the_weights(tmp_path):
    from ddrl.evaluation.results import weights_id

    policy = TinyPolicy.fresh(TinyArchitecture(**ARCH), CharTokenizer(), seed=0)
    policy.save_pretrained(tmp_path / "a")
    policy.save_pretrained(tmp_path / "b")
    assert weights_id(tmp_path / "a") == weights_id(tmp_path / "b")
    with torch.no_grad():
        policy.net.lm_head.weight[0, 0] += 1.0
    policy.save_pretrained(tmp_path / "b")
    assert weights_id(tmp_path / "a") != weights_id(tmp_path / "b")
    assert weights_id(None, {"name": "tiny", "seed": 0}) == weights_id(None, {"seed": 0, "name": "tiny"})
