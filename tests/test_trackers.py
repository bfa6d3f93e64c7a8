"""Experiment trackers (logging.report_to) through accelerate's tracker classes, all offline: wandb's
offline mode, a local MLflow file store, trackio's local database, TensorBoard event files; with
the run configuration, per-step metrics and a table of sample completions. A tracker whose package
is not installed is skipped (``pip install 'ddrl[trackers]'``)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddrl.config import ConfigError, build_config
from ddrl.training.logger import COMPLETIONS_FILE, MetricsLogger, read_metrics
from ddrl.training.trainer import Trainer
from tests.test_trainer import recipe

TWO_STEPS = {"max_steps": 2}  # num_iterations 2: one rollout batch serves both steps
LOGGING = {"report_to": ["jsonl"], "progress": False, "log_completions": True}


def train(tmp_path: Path, **logging) -> Path:
    raw = recipe(tmp_path, train=TWO_STEPS, logging={**LOGGING, **logging})
    Trainer(build_config(raw)).train()
    return tmp_path / "run"


def completions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / COMPLETIONS_FILE).read_text().splitlines()]


def test_log_completions_writes_a_table_of_the_rollout(tmp_path):
    run = train(tmp_path, logging_steps=1)
    rows = completions(run)
    # 8 rows per rollout batch, logged once (step 1) although two steps use it
    assert len(rows) == 8 and {r["step"] for r in rows} == {1}
    assert set(rows[0]) == {"step", "prompt", "completion", "reward", "accuracy"}
    assert all(isinstance(r["prompt"], str) and isinstance(r["completion"], str) for r in rows)
    assert sum(r["reward"] for r in rows) / 8 == pytest.approx(read_metrics(run)[0]["reward"], rel=1e-6)


def test_completions_follow_a_resume(tmp_path):
    run = train(tmp_path)
    logger = MetricsLogger(run, ["jsonl"], log_completions=True)
    logger.truncate_after(0)  # what a resume from step 0 does: its rows are recomputed
    assert completions(run) == []


def test_missing_tracker_package_is_a_config_error(tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install wandb"):
        MetricsLogger(tmp_path, ["jsonl", "wandb"])


def test_logging_steps_thin_the_tracker_not_the_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = recipe(tmp_path, train={"max_steps": 4},
                 logging={**LOGGING, "report_to": ["jsonl", "tensorboard"], "logging_steps": 2})
    Trainer(build_config(raw)).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4]
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]  # resume needs every step
    assert {r["step"] for r in completions(tmp_path / "run")} == {2, 4}  # rollout batches 0 and 1
    assert "completions/text_summary" in events.Tags()["tensors"]  # the table, as markdown text


def wandb_records(path: Path) -> list:
    """The records of an offline wandb run file (``run-ID.wandb``): LevelDB's log format (32 KiB
    blocks of chunks with a 7-byte header: CRC32, length, full/first/middle/last) after a 7-byte
    ':W&B' file header, each record a protobuf ``Record`` (wandb >= 0.2x has no Python reader)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_run_has_config_metrics_and_completions(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(tmp_path, report_to=["jsonl", "wandb"], run_name="tiny-dmpo", project="ddrl-tests")
    (offline,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    (data_file,) = offline.glob("run-*.wandb")
    records = wandb_records(data_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (meta,) = [r.run for r, k in zip(records, kinds) if k == "run"]
    assert meta.display_name == "tiny-dmpo" and meta.project == "ddrl-tests"
    config = {}
    for r, kind in zip(records, kinds):
        if kind in ("run", "config"):
            config.update({i.key: json.loads(i.value_json) for i in (r.run.config if kind == "run" else r.config).update})
    assert config["objective"]["name"] == "dmpo" and config["train"]["max_steps"] == 2
    assert config["logging"]["run_name"] == "tiny-dmpo"
    history: dict = {}
    for r, kind in zip(records, kinds):
        if kind == "history":
            row: dict = {}
            for item in r.history.item:
                *parents, leaf = list(item.nested_key) or [item.key]
                node = row
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = json.loads(item.value_json)
            history.setdefault(row["_step"], {}).update(row)
    metrics = read_metrics(run)
    assert sorted(history) == [1, 2]
    for m in metrics:
        assert history[m["step"]]["loss"] == pytest.approx(m["loss"], rel=1e-6)
        assert history[m["step"]]["reward"] == pytest.approx(m["reward"], rel=1e-6)
    assert history[1]["completions"]["_type"] == "table-file" and "completions" not in history[2]
    table = json.loads((offline / "files" / history[1]["completions"]["path"]).read_text())
    assert table["columns"] == ["step", "prompt", "completion", "reward", "accuracy"]
    assert [row[2] for row in table["data"]] == [r["completion"] for r in completions(run)]


def test_mlflow_file_store_has_params_metrics_and_completions(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.18 asks for it on file stores
    mlflow.set_tracking_uri(uri)
    try:
        run = train(tmp_path, report_to=["jsonl", "mlflow"])  # run_name: the output dir's name
        client = mlflow.MlflowClient(uri)
        (experiment,) = [e for e in client.search_experiments() if e.name == "ddrl"]
        (found,) = client.search_runs([experiment.experiment_id])
    finally:
        mlflow.set_tracking_uri(None)
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    params = found.data.params
    assert params["objective.name"] == "dmpo" and params["train.max_steps"] == "2"
    assert params["logging.report_to"] == '["jsonl", "mlflow"]'
    metrics = read_metrics(run)
    history = [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "loss")]
    assert sorted(history) == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in metrics]
    table_path = client.download_artifacts(found.info.run_id, "completions/step_000001.json", str(tmp_path / "dl"))
    table = json.loads(Path(table_path).read_text())
    assert table["columns"] == ["step", "prompt", "completion", "reward", "accuracy"]
    assert [row[2] for row in table["data"]] == [r["completion"] for r in completions(run)]


TRACKIO_SCRIPT = """
import json, sys
from ddrl.config import build_config
from ddrl.training.trainer import Trainer
import trackio
raw = json.loads(sys.argv[1])
Trainer(build_config(raw)).train()
logs = trackio.SQLiteStorage.get_logs("ddrl", "trackio-run")
config = trackio.SQLiteStorage.get_run_config("ddrl", "trackio-run")
print("RESULT " + json.dumps({"logs": logs, "config": config}, default=str))
"""


def test_trackio_local_run_has_config_metrics_and_completions(tmp_path):
    pytest.importorskip("trackio")
    raw = recipe(tmp_path, train=TWO_STEPS,
                 logging={**LOGGING, "report_to": ["jsonl", "trackio"], "run_name": "trackio-run"})
    # trackio fixes its directory at import: a fresh process keeps the user's database untouched
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", TRACKIO_SCRIPT, json.dumps(raw)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["config"]["objective"]["name"] == "dmpo"
    by_step: dict = {}
    for log in result["logs"]:
        by_step.setdefault(log["step"], {}).update(log)
    metrics = read_metrics(tmp_path / "run")
    for m in metrics:
        assert by_step[m["step"]]["loss"] == pytest.approx(m["loss"], rel=1e-6)
    table = by_step[1]["completions"]
    assert table["_type"] == "trackio.table"
    assert [row["completion"] for row in table["_value"]] == [r["completion"] for r in completions(tmp_path / "run")]
