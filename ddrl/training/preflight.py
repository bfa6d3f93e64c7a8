"""Checks a run passes before training starts, so that a mistake costs seconds rather than a model
load, a held-out evaluation and a failed first rollout.

``check_sequence_lengths``: every training prompt (after ``train.max_prompt_length``) plus the
completion canvas (``sampler.max_completion_length``), and every held-out prompt plus the evaluated
length, must fit the model's maximum sequence length. Without it a too-long prompt surfaced deep in
the first rollout (tiny: ``sequence length 74 exceeds max_seq_len 64``) or, for rotary models,
silently ran past the positions the model was trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ddrl.errors import ConfigError
from ddrl.models.base import max_sequence_length

if TYPE_CHECKING:
    from ddrl.models.base import MaskedDiffusionPolicy
    from ddrl.tasks.base import Example, Task


def _longest(policy: MaskedDiffusionPolicy, task: Task, examples: Sequence[Example],
             max_prompt_length: int | None) -> tuple[int, Any]:
    """(tokens, example id) of the longest encoded prompt, cut as the rollouts cut it."""
    longest, which = 0, None
    for ex in examples:
        n = len(task.encode(ex, policy))
        if max_prompt_length is not None:
            n = min(n, max_prompt_length)
        if n > longest:
            longest, which = n, ex.id
    return longest, which


def check_sequence_lengths(
    policy: MaskedDiffusionPolicy,
    task: Task,
    train_examples: Sequence[Example],
    completion_length: int,
    max_prompt_length: int | None = None,
    eval_cfg: Any = None,
) -> None:
    """Refuse (``ConfigError``) a run whose longest training prompt plus ``completion_length``, or
    whose longest held-out prompt plus the evaluated length (``eval_cfg`` with ``during_training``),
    exceeds the model's maximum sequence length; the message names the example, the numbers, the
    settings involved and what to change."""
    found = max_sequence_length(policy)
    if found is None:
        return
    limit, limit_name = found
    name = task.config.name
    if completion_length > limit:
        raise ConfigError(
            f"sampler.max_completion_length {completion_length} exceeds the model's maximum sequence length "
            f"{limit} ({limit_name}); set sampler.max_completion_length to at most {limit}"
        )
    longest, which = _longest(policy, task, train_examples, max_prompt_length)
    if longest + completion_length > limit:
        cut = "" if max_prompt_length is None else f" (after train.max_prompt_length={max_prompt_length})"
        raise ConfigError(
            f"the longest training prompt of task {name!r} (example {which!r}) has {longest} tokens{cut}, and "
            f"with sampler.max_completion_length {completion_length} the sequence has {longest + completion_length} "
            f"tokens, more than the model's maximum sequence length {limit} ({limit_name}). Set "
            f"sampler.max_completion_length <= {limit - longest}, or train.max_prompt_length <= "
            f"{limit - completion_length} (keeps the end of longer prompts), or use a model with a longer maximum"
        )
    if eval_cfg is None or not getattr(eval_cfg, "during_training", False) or _is_measured(task):
        return
    length = eval_cfg.lengths[0] if eval_cfg.lengths else completion_length
    examples = task.split(eval_cfg.split)
    if eval_cfg.num_examples is not None:
        examples = examples[: eval_cfg.num_examples]
    longest, which = _longest(policy, task, examples, None)
    if longest + length > limit:
        raise ConfigError(
            f"the held-out evaluation (eval.during_training) would not fit: the longest {eval_cfg.split!r} prompt "
            f"of task {name!r} (example {which!r}) has {longest} tokens, plus the evaluated length {length} "
            f"(eval.lengths[0]) makes {longest + length}, more than the model's maximum sequence length {limit} "
            f"({limit_name}). Set eval.lengths=[{max(limit - longest, 1)}] or less, or eval.during_training=false"
        )


def _is_measured(task: Task) -> bool:
    """A task that measures the policy's distribution itself (energy targets) draws no prompts."""
    from ddrl.tasks.base import Task as BaseTask

    return getattr(type(task), "measure_policy", BaseTask.measure_policy) is not BaseTask.measure_policy
