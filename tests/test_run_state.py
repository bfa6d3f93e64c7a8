"""No lost or torn state: atomic run files, a refused torn config.yaml, evaluation rows kept exactly
across a resume, one run per directory, a torn last metrics line recovered from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from pathlib import Path
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import build_config
from ddrl.training.logger import TornMetrics, read_metrics
from ddrl.training.run_dir import RunInUse, RunLock, write_text_atomic
from ddrl.training.trainer import Trainer
from tests.test_trainer import recipe, stable

EVAL = {"during_training": True, "eval_steps": 2, "num_examples": 2, "lengths": [8], "batch_size": 2}


def _raw(tmp_path, name: str, steps: int = 6) -> dict:
    raw = recipe(tmp_path, train={"max_steps": steps, "save_steps": 2, "save_total_limit": 10}, eval=EVAL)
    raw["train"]["output_dir"] = str(tmp_path / name)
    return raw


class Crash(Exception):
    pass


def _crash_after_save(monkeypatch, at_step: int) -> None:
    original = Trainer._save

    def save_then_die(self, step):
        original(self, step)
        if step == at_step:
            raise Crash(f"killed right after the step-{step} checkpoint")

    monkeypatch.setattr(Trainer, "_save", save_then_die)


def test_evaluation_rows_survive_a_crash_right_after_a_checkpoint(tmp_path, monkeypatch):
    whole = Trainer(build_config(_raw(tmp_path, "whole"))).train().metrics
    assert sum("eval_accuracy" in m for m in whole) == 4  # before, steps 2 and 4, after

    _crash_after_save(monkeypatch, 4)
    with pytest.raises(Crash):
        Trainer(build_config(_raw(tmp_path, "crashed"))).train()
    monkeypatch.undo()
    Trainer(build_config(_raw(tmp_path, "crashed")), resume=True).train()
    assert stable(read_metrics(tmp_path / "crashed")) == stable(whole)


def test_a_crash_before_the_first_checkpoint_does_not_duplicate_the_step_0_evaluation(tmp_path):
    whole = Trainer(build_config(_raw(tmp_path, "whole"))).train().metrics

    def die(trainer, step):
        if step == 1:
            raise Crash("killed before any checkpoint")

    with pytest.raises(Crash):
        Trainer(build_config(_raw(tmp_path, "crashed")), callbacks=[die]).train()
    Trainer(build_config(_raw(tmp_path, "crashed")), resume=True).train()
    assert stable(read_metrics(tmp_path / "crashed")) == stable(whole)


@pytest.mark.parametrize("content", ["", "model: {name: tin", "- 1\n- 2\n", "train: {max_steps: 12}\n"])
def test_resume_refuses_an_empty_or_torn_config_and_leaves_it_alone(tmp_path, content):
    raw = _raw(tmp_path, "run", steps=2)
    Trainer(build_config(raw)).train()
    config = tmp_path / "run" / "config.yaml"
    config.write_text(content)
    out = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert out.exit_code == 2
    assert "config.yaml" in out.output and "cannot resume" in out.output
    assert config.read_text() == content  # not overwritten with defaults


def test_one_run_per_directory(tmp_path):
    raw = _raw(tmp_path, "run", steps=2)
    first = Trainer(build_config(raw))
    with pytest.raises(RunInUse, match=f"pid {os.getpid()}"):
        Trainer(build_config(raw), resume=True)
    first.train()  # releases the directory at its end
    Trainer(build_config(raw), resume=True).train()  # now free


def test_a_killed_process_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ddrl.training.run_dir import RunLock; "
                               f"lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunInUse, match=f"pid {holder.pid}"):
        RunLock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    RunLock(tmp_path).release()  # the kernel dropped the dead process's lock


def test_a_torn_last_metrics_line_is_named_and_recovered_from_the_checkpoint(tmp_path):
    whole = Trainer(build_config(_raw(tmp_path, "whole", steps=4))).train().metrics
    raw = _raw(tmp_path, "torn", steps=4)
    Trainer(build_config({**raw, "train": {**raw["train"], "max_steps": 2}})).train()
    metrics = tmp_path / "torn" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 3, "loss": 0.4')  # killed mid-write
    with pytest.warns(UserWarning, match="metrics.jsonl:.*torn last line"):
        read_metrics(tmp_path / "torn")
    with pytest.warns(UserWarning, match="torn last line"):
        Trainer(build_config(raw), resume=True).train()
    assert stable(read_metrics(tmp_path / "torn")) == stable(whole)


def test_a_damaged_line_inside_the_metrics_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(TornMetrics, match="metrics.jsonl:2"):
        read_metrics(tmp_path)


def test_final_is_whole_or_absent(tmp_path, monkeypatch):
    raw = _raw(tmp_path, "run", steps=2)
    trainer = Trainer(build_config(raw))

    original = trainer.policy.save_pretrained

    def half_written(path):
        if Path(path).name != "final.tmp":  # the checkpoint's copy is written as usual
            return original(path)
        (path / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(trainer.policy, "save_pretrained", half_written)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    assert not (tmp_path / "run" / "final").exists()


def test_atomic_write_keeps_the_old_content_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"train": {"max_steps": 12}}))

    def no_space(fd):
        raise OSError("no space left")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        write_text_atomic(path, "model: {}\n" * 1000)
    assert yaml.safe_load(path.read_text()) == {"train": {"max_steps": 12}}


RECORD = ('{"label": "tiny[countdown]", "model": "tiny", "objective": "dmpo", "task": "countdown", '
          '"task_id": "countdown", "task_variant": "toy", "length": 8, "steps": 4, "seed": 0, "accuracy": 0.5}')


def test_a_torn_last_results_record_is_skipped_and_the_next_append_starts_a_fresh_line(tmp_path):
    from ddrl.evaluation.results import ResultStore

    path = tmp_path / "results.jsonl"
    path.write_text(RECORD + "\n" + RECORD[:20])  # killed while appending the second record
    store = ResultStore(path)
    with pytest.warns(UserWarning, match="results.jsonl:2: torn last record"):
        assert len(store.load()) == 1
    store.append({**json.loads(RECORD), "length": 16})
    assert [r["length"] for r in store.load()] == [8, 16]  # the torn bytes are gone, nothing glued


def test_the_leaderboard_files_are_replaced_whole(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    path.write_text(RECORD + "\n")
    (tmp_path / "leaderboard.md").write_text("previous board\n")

    def no_space(fd):
        raise OSError("no space left")

    monkeypatch.setattr(os, "fsync", no_space)
    CliRunner().invoke(app, ["leaderboard", "--results", str(path)])
    assert (tmp_path / "leaderboard.md").read_text() == "previous board\n"  # not a half-written one
    monkeypatch.undo()
    out = CliRunner().invoke(app, ["leaderboard", "--results", str(path)])
    assert out.exit_code == 0, out.output
    assert "countdown" in (tmp_path / "leaderboard.md").read_text()
