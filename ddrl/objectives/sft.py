"""`sft`: masked-diffusion supervised fine-tuning, LLaDA's published recipe (docs/objectives.md, "SFT").

The prompt stays clean; per sequence t ~ U(0, 1), p_mask = (1 - eps) t + eps (eps = 1e-3); the
loss is sum over masked positions of CE / p_mask, divided by the answer length (trailing EOS
padding included, so the model learns to stop), averaged over the batch. ``normalization: token``
divides by the total number of answer tokens of the micro-batch instead (as other libraries do).
It is the weighted denoising cross-entropy with unit weights (``objectives.denoising``).

The completions are the data's, not samples (``supervised = True``: the trainer takes the task's
reference completions): no reward is used.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, Field

from ddrl.estimators.base import score_views
from ddrl.estimators.masks import sft_masks
from ddrl.objectives.base import NoState, Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch
from ddrl.objectives.denoising import wdce, wdce_by_parts


class SFTConfig(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "sft"
    eps: float = Field(1e-3, gt=0, lt=1, description="minimum masking probability")
    normalization: Literal["sequence", "token"] = Field(
        "sequence", description="sequence: / answer length, mean over rows (LLaDA); token: / all answer tokens"
    )


class SFT(Objective[NoState]):
    Config = SFTConfig
    config: SFTConfig
    supervised = True

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> NoState:
        return NoState()

    def loss(self, rollout: RolloutBatch, state: NoState, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        valid = rollout.batch.completion_mask
        views = sft_masks(valid, ctx.generator, self.config.eps)
        b = valid.shape[0]
        if self.config.normalization == "token":
            # undo the per-row 1/answer-length and divide by the micro-batch's answer tokens
            lengths = valid.sum(-1).clamp(min=1).float()
            rows = lengths / valid.sum().clamp(min=1).float()
        else:
            rows = torch.full((b,), 1.0 / b, device=valid.device)
        if ctx.loss_micro_batch_size is not None and ctx.backward is not None:
            loss = wdce_by_parts(ctx.policy, rollout.batch, views, rows, ctx.loss_micro_batch_size, ctx.backward)
            return ObjectiveOutput(loss, {"sft_loss": loss.item()}, backward_done=True)
        loss = wdce(score_views(ctx.policy, rollout.batch, views), views.weights, rows)
        return ObjectiveOutput(loss, {"sft_loss": loss.item()})
