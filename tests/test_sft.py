"""Supervised masked-diffusion training: the loss by hand, its identity with WDCE, `ddrl pretrain`."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from ddrl.batch import SequenceBatch
from ddrl.cli.app import app
from ddrl.estimators.base import MaskedViews
from ddrl.estimators.masks import sft_masks
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.estimators.base import score_views
from ddrl.objectives.base import NoState
from ddrl.objectives.denoising import wdce
from ddrl.objectives.sft import SFT, SFTConfig
from ddrl.training.logger import read_metrics

ARCH = TinyArchitecture(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64)


@pytest.fixture(scope="module")
def policy() -> TinyPolicy:
    return TinyPolicy.fresh(ARCH, CharTokenizer("ab"), seed=1)


def batch() -> SequenceBatch:
    # <bos> a | a b <eos> ; <bos> b | b b <eos>   (ids: a=5, b=6, eos=3, bos=2)
    return SequenceBatch.from_parts(torch.tensor([[2, 5], [2, 6]]), torch.tensor([[5, 6, 3], [6, 6, 3]]))


def test_sft_loss_matches_a_hand_computed_value_on_fixed_masks(policy):
    """sum over masked positions of CE / p, divided by the answer length 3, averaged over 2 rows."""
    b = batch()
    masked = torch.tensor([[True, False, True], [False, True, False]])
    p = torch.tensor([[0.5], [0.25]])
    views = MaskedViews(masked[:, None], masked[:, None], (masked.float() / (p * 3))[:, None])
    loss = wdce(score_views(policy, b, views), views.weights, torch.full((2,), 0.5))
    expected = 0.0
    with torch.no_grad():
        for row in range(2):
            canvas = b.input_ids[row].clone()
            canvas[2:][masked[row]] = policy.mask_token_id
            lp = torch.log_softmax(policy.logits(canvas[None])[0, 2:], -1)
            ce = -sum(lp[d, b.completion_ids[row, d]].item() for d in range(3) if masked[row, d])
            expected += 0.5 * ce / p[row].item() / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_sft_objective_is_wdce_with_unit_weights(policy):
    b = batch()
    objective = SFT(SFTConfig())
    ctx = ObjectiveContext(policy=policy, estimator=None, generator=torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    out = objective.loss(RolloutBatch(b, torch.zeros(2), torch.arange(2)), NoState(), ctx, 0)
    views = sft_masks(b.completion_mask, torch.Generator().manual_seed(3), 1e-3)
    assert out.loss.item() == pytest.approx(wdce(score_views(policy, b, views), views.weights, torch.full((2,), 0.5)).item(), rel=1e-6)


def test_sft_masks_follow_llada_schedule():
    valid = torch.ones(20000, 10, dtype=torch.bool)
    valid[:, 8:] = False
    views = sft_masks(valid, torch.Generator().manual_seed(0), eps=1e-3)
    masked = views.completion_masked[:, 0]
    assert not bool(masked[:, 8:].any())
    # E[p] = (1 - eps)/2 + eps, so about 50% of valid tokens are masked
    assert masked[:, :8].float().mean().item() == pytest.approx(0.5 * (1 - 1e-3) + 1e-3, abs=0.01)
    # weight of a masked token = 1 / (p * 8), with p >= eps: the same p for every token of a row
    w = views.weights[:, 0]
    row_p = 1 / (w.max(-1).values * 8)
    assert bool((row_p[masked.any(-1)] >= 1e-3 - 1e-9).all())
    assert torch.allclose(w, masked.float() / (row_p[:, None] * 8))


def test_pretrain_command_trains_on_noisy_reference_solutions_and_exports(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "pretrain", "--task", "countdown", "--output-dir", str(out), "--export", str(tmp_path / "model"),
        "--set", "train.max_steps=3", "--set", "train.save_steps=3", "--set", "train.reference_noise=0.5",
        "--set", "train.per_device_train_batch_size=256", "--set", "eval.during_training=false",
        "--set", "model.architecture.d_model=32", "--set", "model.architecture.n_layers=1",
        "--set", "logging.progress=false",
    ])
    assert result.exit_code == 0, result.output
    metrics = [m for m in read_metrics(out) if "loss" in m]
    assert len(metrics) == 3 and all(math.isfinite(m["loss"]) for m in metrics)
    # the reference data are right except where noise swapped an operator: accuracy ~ 1 - 0.5
    accuracy = sum(m["accuracy"] for m in metrics) / 3
    assert 0.4 < accuracy < 0.6
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert TinyPolicy.from_pretrained(tmp_path / "model").arch.d_model == 32


def test_the_data_source_follows_the_objective_and_the_old_completions_knob_is_ignored(tmp_path):
    """sft trains on the task's solutions because the objective is supervised: no second setting.
    A config written before (``train.completions: sampled``) still loads; the field is ignored."""
    from ddrl.config import build_config
    from ddrl.training.trainer import Trainer

    raw = {"model": {"name": "tiny", "architecture": {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64}},
           "task": {"name": "countdown", "variant": "toy", "operators": "+-"},
           "sampler": {"name": "block", "max_completion_length": 8, "block_length": 8, "steps": 8},
           "objective": {"name": "sft"},
           "train": {"output_dir": str(tmp_path / "r"), "max_steps": 1, "per_device_train_batch_size": 8,
                     "num_generations": 1, "completions": "sampled"},
           "logging": {"report_to": ["jsonl"], "progress": False}}
    with pytest.warns(DeprecationWarning, match="train.completions is ignored"):
        config = build_config(raw)
    assert "completions" not in config.train.model_dump()
    metrics = Trainer(config).train().metrics
    # a fresh model's samples solve nothing; the task's reference solutions all do
    assert [m["accuracy"] for m in metrics if "loss" in m] == [1.0]
