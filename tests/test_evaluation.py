"""Evaluation protocol, append-only records, the leaderboard table and the eval/leaderboard CLI."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import EvalConfig
from ddrl.evaluation.evaluate import evaluate, protocol_sampler
from ddrl.evaluation.leaderboard import build_leaderboard, column_label
from ddrl.evaluation.results import ResultStore
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.tasks.countdown import CountdownConfig, CountdownTask
from ddrl.tasks.ising_potts import IsingConfig, IsingTask
from ddrl.training.seeding import derive_seed

SMALL_ARCH = TinyArchitecture(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64)


@pytest.mark.parametrize(
    "length,block,fraction,expected",
    [(256, 32, 0.5, (32, 128)), (256, 32, 1.0, (32, 256)), (8, 32, 1.0, (8, 8)), (24, 32, 0.5, (8, 12)), (16, 32, 0.5, (16, 8))],
)
def test_protocol_sampler_uses_block_length_and_step_convention(length, block, fraction, expected):
    sampler = protocol_sampler(length, EvalConfig(block_length=block, steps_per_length=fraction))
    assert (sampler.config.block_length, sampler.config.steps) == expected
    assert sampler.config.temperature == 0.0


def test_evaluate_scores_every_example_with_the_task_scorer():
    task = CountdownTask(CountdownConfig(variant="toy", num_generated_train=8, num_generated_test=12))
    policy = TinyPolicy.fresh(SMALL_ARCH, CharTokenizer(), seed=0).eval()
    cfg = EvalConfig(num_examples=10, batch_size=4, steps_per_length=1.0)
    result = evaluate(policy, task, 8, cfg, seed=0)
    examples = task.split("test")[:10]
    expected = sum(task.score(e, c)["accuracy"] for e, c in zip(examples, result.completions)) / 10
    assert result.num_examples == 10 and result.accuracy == expected
    assert result.nfe == 3 * 8  # 3 batches (4 + 4 + 2) x 8 steps
    assert evaluate(policy, task, 8, cfg, seed=0).completions == result.completions  # greedy: repeatable


def test_leaderboard_averages_seeds_marks_the_best_and_separates_step_conventions():
    def rec(label, objective, acc, seed, steps=8, length=8):
        return {"label": label, "model": "tiny", "objective": objective, "task": "countdown", "task_variant": "toy",
                "length": length, "steps": steps, "seed": seed, "accuracy": acc}

    records = [rec("tiny[countdown]", None, 0.2, 0), rec("tiny[countdown]", None, 0.4, 1),
               rec("tiny[countdown]", "dmpo", 0.5, 0), rec("tiny[countdown]", "dmpo", 0.7, 1),
               rec("tiny[countdown]", "dmpo", 0.9, 0, steps=4)]
    board = build_leaderboard(records)
    assert board.rows == ["tiny[countdown] / base", "tiny[countdown] / dmpo"]
    assert board.columns == ["countdown[toy] L=8 s=L", "countdown[toy] L=8 s=L/2"]  # conventions apart
    cell = board.cells[("tiny[countdown] / dmpo", "countdown[toy] L=8 s=L")]
    assert cell.mean == pytest.approx(0.6) and cell.std == pytest.approx(0.1414, abs=1e-4) and cell.n == 2
    assert board.best["countdown[toy] L=8 s=L"] == "tiny[countdown] / dmpo"
    md = board.markdown()
    assert "**60.0 ± 14.1**" in md and "30.0 ± 14.1" in md and "–" in md
    assert board.csv().count("\n") == 1 + 3
    assert column_label(rec("x", None, 0, 0, steps=3, length=8)).endswith("s=3")


def test_result_store_is_append_only_and_latest_wins(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    base = {"policy": "p", "task_id": "t@1", "length": 8, "steps": 8, "seed": 0}
    store.append({**base, "accuracy": 0.1})
    store.append({**base, "accuracy": 0.3})
    assert len(store.load()) == 2
    assert [r["accuracy"] for r in store.latest()] == [0.3]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        ResultStore(tmp_path / "bad.jsonl").load()


def test_eval_then_leaderboard_from_the_cli(tmp_path):
    model_dir = tmp_path / "base"
    TinyPolicy.fresh(SMALL_ARCH, CharTokenizer(), seed=0).save_pretrained(model_dir)
    results = tmp_path / "results.jsonl"
    args = ["eval", str(model_dir), "--task", "countdown", "--set", "task.variant=toy", "--set", "task.num_generated_test=6",
            "--set", "task.num_generated_train=6", "--length", "8", "--seed", "0", "--seed", "1",
            "--results", str(results)]
    runner = CliRunner()
    first = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 2 and {r["seed"] for r in records} == {0, 1}
    for key in ("accuracy", "nfe", "tokens_per_second", "wall_seconds", "config", "git_revision", "steps"):
        assert key in records[0]
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "skip (recorded)" in again.output
    assert len(results.read_text().splitlines()) == 2  # nothing re-run, nothing rewritten
    redo = runner.invoke(app, [*args, "--redo"], env={"COLUMNS": "200"})
    assert redo.exit_code == 0 and len(results.read_text().splitlines()) == 4
    board = runner.invoke(app, ["leaderboard", "--results", str(results)], env={"COLUMNS": "200"})
    assert board.exit_code == 0, board.output
    assert (tmp_path / "leaderboard.md").read_text().startswith("| model | countdown[toy] L=8 s=L/2 |")
    assert (tmp_path / "leaderboard.csv").is_file()


def test_leaderboard_without_records_says_what_to_do(tmp_path):
    result = CliRunner().invoke(app, ["leaderboard", "--results", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 2 and "ddrl eval" in result.output


def lattice_policy() -> TinyPolicy:
    arch = TinyArchitecture(vocab_size=3, d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, max_seq_len=8,
                            init_std=0.3, absolute_positions=True)
    return TinyPolicy.fresh(arch, None, seed=0).eval()


def test_a_measured_task_reports_its_own_metric_from_its_own_sampler_at_its_own_length():
    task = IsingTask(IsingConfig(L=2, eval_samples=300))
    policy = lattice_policy()
    result = evaluate(policy, task, 4, EvalConfig(), seed=1)
    assert result.metric == "ess" and math.isnan(result.accuracy) and 0 < result.value < 1
    assert result.value == result.metrics["ess"] and "log_z_error" in result.metrics and "kl_hist" in result.metrics
    assert result.num_examples == 300 and result.nfe == 4  # one batch, one site per step
    assert result.metrics == task.measure_policy(policy, None, derive_seed(1, "eval"))  # the task's exact sampler
    assert evaluate(policy, task, 4, EvalConfig(), seed=2).value != result.value
    with pytest.raises(ValueError, match="measured at length 4"):
        evaluate(policy, task, 128, EvalConfig(), seed=1)


def test_leaderboard_shows_a_measured_metric_as_it_is_in_a_column_of_its_own():
    def rec(objective, value, seed):
        return {"label": "tiny", "model": "tiny", "objective": objective, "task": "ising", "length": 16, "steps": 16,
                "seed": seed, "accuracy": math.nan, "metric": "ess", "value": value}

    board = build_leaderboard([rec("dmpo", 0.95, 0), rec("dmpo", 0.97, 1), rec("rerf", 0.6, 0)])
    assert board.columns == ["ising L=16 s=L ess"]
    assert board.best["ising L=16 s=L ess"] == "tiny / dmpo"
    md = board.markdown()
    assert "**0.960 ± 0.014**" in md and "| 0.600 |" in md


def test_eval_of_an_ising_model_from_the_cli_records_the_ess(tmp_path):
    lattice_policy().save_pretrained(tmp_path / "sampler")
    results = tmp_path / "results.jsonl"
    args = ["eval", str(tmp_path / "sampler"), "--task", "ising", "--set", "task.L=2", "--set", "task.eval_samples=64",
            "--results", str(results)]
    runner = CliRunner()
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ess 0." in result.output and "log_z_error" in result.output
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["metric"] == "ess" and record["length"] == 4 and 0 < record["value"] <= 1
    board = runner.invoke(app, ["leaderboard", "--results", str(results)], env={"COLUMNS": "200"})
    assert board.exit_code == 0, board.output
    assert "ising L=4 s=L ess" in (tmp_path / "leaderboard.md").read_text()
    wrong = runner.invoke(app, [*args, "--length", "128", "--redo"], env={"COLUMNS": "200"})
    assert wrong.exit_code == 2 and "measured at length 4" in wrong.output
