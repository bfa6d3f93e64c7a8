"""Conformance checks: does a registered component keep its group's contract?

Each ``check_<group>(name, distribution=..., options=...)`` builds the component through the
registry, exactly as a run does, and exercises it on the built-in `tiny` model:

* **registry attribution** — the name resolves, comes from ``distribution`` and has no problem in
  ``Registry.check_all`` (import error, name clash, interface violation);
* **contract and shapes** — what each method returns has the documented type and shape;
* **seeded determinism** — the same seeds give bit-identical results;
* **behaviour** — e.g. an objective's loss is a finite scalar whose gradient reaches the policy,
  its state survives being cut into chunks and joined, a sampler's exact path log-probabilities
  equal the exact estimator's along the recorded order.

A failed check raises ``ConformanceError`` (an ``AssertionError``, so pytest reports it as a
failure) saying which component, what was expected and what came back.
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch, left_pad
from ddrl.errors import PluginContractError
from ddrl.estimators.base import MaskedViews, TokenLogProbs
from ddrl.estimators.exact import ExactConfig, ExactEstimator
from ddrl.objectives.base import Objective, ObjectiveContext, ObjectiveOutput, Weighed
from ddrl.registry import Registry
from ddrl.rows import RowState
from ddrl.samplers.base import SampleOutput
from ddrl.tasks.base import Example
from ddrl.testing.components import build, generator, sampled_rollout, text_policy, trainable

PROMPTS = ("ab", "ba")  # two groups ...
GENERATIONS = 4  # ... of four completions each, cut into two chunks
LENGTH = 6  # completion length of the samplers built here


F = TypeVar("F", bound=Callable[..., Any])


class ConformanceError(AssertionError):
    """A component that does not keep its group's contract."""


def _require(condition: bool, label: str, message: str) -> None:
    if not condition:
        raise ConformanceError(f"{label}: {message}")


def _reported(check: F) -> F:
    """A check whose run-time contract errors (ddrl's output guards on plugins) are reported as
    conformance failures too."""

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except PluginContractError as err:
            raise ConformanceError(str(err)) from err

    return run  # type: ignore[return-value]


def check_registered(registry: Registry, group: str, name: str, distribution: str | None) -> str:
    """The component resolves, comes from ``distribution`` (if given) and has no reported problem;
    returns the label used in messages."""
    label = f"{group[:-1]} {name!r}"
    _require(name in registry.names(group), label, f"not registered; {group}: {', '.join(registry.names(group))}")
    origin = registry.origin(group, name)
    if distribution is not None:
        _require(origin.split(" ")[0] == distribution, label, f"registered by {origin!r}, expected {distribution!r}")
    problems = [p.message for p in registry.check_all() if (p.group, p.name) == (group, name)]
    _require(not problems, label, "; ".join(problems))
    return f"{label} ({origin})"


# ------------------------------------------------------------------------------------------------
# objectives


@_reported
def check_objective(
    name: str,
    distribution: str | None = None,
    options: dict[str, Any] | None = None,
    estimator: dict[str, Any] | None = None,
    sampler: dict[str, Any] | None = None,
    registry: Registry | None = None,
    num_iterations: int = 2,
) -> dict[str, float]:
    """Run an objective's phases as the trainer does (two chunks, ``num_iterations`` inner
    iterations with an SGD step between them) twice from the same seeds; check every output and
    that both runs agree bit for bit. ``estimator``/``sampler`` are recipe sections (default: the
    objective's preferred estimator, a built-in sampler that records what it needs). Returns the
    logged metrics of the first run."""
    registry = registry or Registry()
    label = check_registered(registry, "objectives", name, distribution)
    objective = build(registry, "objectives", name, **(options or {}))
    est = _estimator_for(registry, objective, estimator, label)
    smp = _sampler_for(registry, objective, sampler, label)
    policy = text_policy(registry)
    carried = objective.state_dict()  # what it carries between rollout batches (DMPO's replay pool)
    _require(all(isinstance(v, torch.Tensor) for v in carried.values()), label, "state_dict() must hold tensors only")
    first = _objective_phases(objective, policy, est, smp, num_iterations, label)
    after = objective.state_dict()
    _require(all(isinstance(v, torch.Tensor) for v in after.values()), label, "state_dict() must hold tensors only")
    objective.load_state_dict(carried)  # the second run starts from the same carried state
    second = _objective_phases(objective, policy, est, smp, num_iterations, label)
    _require(first[0] == second[0], label, f"the same seeds gave different losses: {first[0]} vs {second[0]}")
    same_grads = all(torch.equal(a, b) for a, b in zip(first[1], second[1]))
    _require(same_grads, label, "the same seeds gave different gradients")
    _require(any(g.abs().sum() > 0 for g in first[1]), label, "the loss has no gradient with respect to the policy")
    return first[2]


def _estimator_for(registry: Registry, objective: Objective, section: dict[str, Any] | None, label: str) -> Any:
    spec = dict(section or {"name": objective.preferred_estimator or "elbo"})
    est = build(registry, "estimators", spec.pop("name"), **spec)
    missing = set(objective.needs_estimator) - set(est.provides)
    _require(not missing, label, f"needs an estimator providing {sorted(missing)}; pass estimator=...")
    return est


def _sampler_for(registry: Registry, objective: Objective, section: dict[str, Any] | None, label: str) -> Any:
    candidates = [section] if section else [
        {"name": "block", "max_completion_length": LENGTH, "block_length": LENGTH, "steps": LENGTH, "temperature": 1.0},
        {"name": "ancestral", "max_completion_length": LENGTH, "temperature": 1.0},
    ]
    for spec in candidates:
        spec = dict(spec)
        smp = build(registry, "samplers", spec.pop("name"), **spec)
        if set(objective.needs_sampler) <= set(smp.records):
            return smp
    return _require(False, label, f"no sampler tried records {sorted(objective.needs_sampler)}; pass sampler=...")


def _objective_phases(
    objective: Objective, start: Any, est: Any, smp: Any, mu: int, label: str
) -> tuple[list[float], list[Tensor], dict[str, float]]:
    """prepare per chunk -> cat -> weigh -> (begin_iteration -> loss per chunk -> SGD step) x mu."""
    policy = copy.deepcopy(start).train()
    ref = policy.frozen_reference() if objective.needs_reference else None

    def ctx(seed: int | None) -> ObjectiveContext:
        return ObjectiveContext(policy, est, ref, generator=None if seed is None else generator(seed), num_iterations=mu)

    rollout = sampled_rollout(policy, smp, PROMPTS, GENERATIONS, seed=0, scorers=objective.rollout_scorers(ctx(None)))
    chunks = [slice(0, GENERATIONS), slice(GENERATIONS, 2 * GENERATIONS)]
    with torch.no_grad():
        states = [objective.prepare(rollout.index(c), ctx(10 + i)) for i, c in enumerate(chunks)]
        _require(all(isinstance(s, RowState) for s in states), label, "prepare() must return a ddrl.rows.RowState")
        state = type(states[0]).cat(states)
        _check_rows(state, len(rollout), label)
        parts = [state.index(c) for c in chunks]
        for part in parts:
            _check_rows(part, GENERATIONS, label)
        _require(_same(type(state).cat(parts), state), label, "its state cut into chunks and joined again differs from the state")
        weighed = objective.weigh(rollout, state, ctx(None))
    _require(isinstance(weighed, Weighed), label, f"weigh() returned {type(weighed).__name__}, expected Weighed")
    metrics = _finite_metrics(weighed.metrics, label, "weigh()")
    state, losses, grads = weighed.state, [], []
    optimizer = torch.optim.SGD(trainable(policy), lr=0.1)
    for it in range(mu):
        with torch.no_grad():
            state = objective.begin_iteration(rollout, state, ctx(20 + it), it)
        for i, c in enumerate(chunks):
            out = objective.loss(rollout.index(c), state.index(c), ctx(30 + 10 * it + i), it)
            _check_loss(out, label)
            out.loss.backward()
            losses.append(out.loss.item())
            metrics.update(_finite_metrics(out.metrics, label, "loss()"))
        grads.extend(p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainable(policy))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses, grads, metrics


def _check_loss(out: Any, label: str) -> None:
    _require(isinstance(out, ObjectiveOutput), label, f"loss() returned {type(out).__name__}, expected ObjectiveOutput")
    loss = out.loss
    _require(isinstance(loss, Tensor) and loss.dim() == 0, label, f"loss() must be a scalar tensor, got {loss!r}")
    _require(bool(torch.isfinite(loss)), label, f"loss() is not finite: {loss.item()}")
    _require(loss.requires_grad, label, "loss() carries no gradient")


def _finite_metrics(metrics: Any, label: str, where: str) -> dict[str, float]:
    _require(isinstance(metrics, dict), label, f"{where} metrics must be a dict of floats")
    for key, value in metrics.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        _require(ok, label, f"{where} metric {key!r} = {value!r} is not a finite float")
    return dict(metrics)


def _tensors(value: Any, path: str) -> Iterator[tuple[str, Tensor]]:
    """Every tensor inside a state (dataclass fields, lists, tuples, dicts), with where it is."""
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}[{key!r}]")
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from _tensors(getattr(value, f.name), f"{path}.{f.name}")


def _check_rows(state: RowState, rows: int, label: str) -> None:
    """Every tensor of the state with a dimension has the batch's rows on its first one."""
    for path, t in _tensors(state, type(state).__name__):
        ok = t.dim() == 0 or t.shape[0] == rows
        _require(ok, label, f"{path} has shape {list(t.shape)} in a state of {rows} rows; row values go first "
                            "(tuples and other containers are not cut into rows: use a list or a field)")


def _same(a: Any, b: Any) -> bool:
    """Field-by-field equality of states, views, tensors, lists and dicts."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return a == b


# ------------------------------------------------------------------------------------------------
# estimators and samplers


def _ragged_batch() -> SequenceBatch:
    """Three rows over the ``ab`` policy, prompts of unequal length (left padding), the last row's
    completion counted only up to its EOS (id 3)."""
    prompts, _ = left_pad([[2, 5, 6], [2, 6], [2, 5, 5, 6]], 0)
    mask = prompts != 0
    completions = torch.tensor([[5, 6, 5, 6, 5], [6, 6, 5, 5, 6], [5, 3, 3, 3, 3]])
    valid = torch.tensor([[True] * 5, [True] * 5, [True, True, False, False, False]])
    return SequenceBatch(prompts, mask, completions, valid)


@_reported
def check_estimator(
    name: str, distribution: str | None = None, options: dict[str, Any] | None = None, registry: Registry | None = None
) -> None:
    """``draw`` gives ``[B, R, L]`` views that score only counted positions, the same ones for the same
    seed; ``score`` gives log-probabilities (<= 0, 0 where not scored) with a gradient."""
    registry = registry or Registry()
    label = check_registered(registry, "estimators", name, distribution)
    est = build(registry, "estimators", name, **(options or {}))
    policy, batch = text_policy(registry), _ragged_batch()
    views = est.draw(batch, generator(0))
    _require(isinstance(views, MaskedViews), label, f"draw() returned {type(views).__name__}, expected MaskedViews")
    b, r, n = views.scored.shape
    _require((b, n) == tuple(batch.completion_ids.shape), label, f"draw() gave views of shape {[b, r, n]} for a [3, 5] batch")
    outside = views.scored & ~batch.completion_mask[:, None, :]
    _require(not bool(outside.any()), label, "draw() scores positions outside the batch's completion_mask")
    _require(_same(est.draw(batch, generator(0)), views), label, "draw() with the same seed gave other views")
    scored = est.score(policy, batch, views)
    _require(isinstance(scored, TokenLogProbs), label, f"score() returned {type(scored).__name__}, expected TokenLogProbs")
    lp = scored.logprobs
    _require(lp.shape == views.scored.shape, label, f"score() gave log-probs of shape {list(lp.shape)}, views {[b, r, n]}")
    _require(bool(torch.isfinite(lp).all()) and bool((lp <= 0).all()), label, "log-probabilities must be finite and <= 0")
    _require(not bool(lp[~views.scored].any()), label, "log-probabilities must be 0 where a view scores nothing")
    sequence = scored.sequence()
    _require(tuple(sequence.shape) == (b,), label, f"sequence() must be [B] = [{b}], got {list(sequence.shape)}")
    sequence.sum().backward()
    _require(any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable(policy)), label, "score() carries no gradient")


@_reported
def check_sampler(
    name: str, distribution: str | None = None, options: dict[str, Any] | None = None, registry: Registry | None = None
) -> None:
    """``sample`` fills every position of ``[B, L]`` (left-padded prompts), repeats itself for the same
    seed, and records what ``records`` promises; with ``exact_path`` the recorded log-probabilities
    sum to the exact path likelihood along the recorded order."""
    registry = registry or Registry()
    label = check_registered(registry, "samplers", name, distribution)
    smp = build(registry, "samplers", name, **(options or {}))
    policy = text_policy(registry)
    scorer = text_policy(registry, seed=1)
    ids, mask = left_pad([policy.encode_prompt(p) for p in ("ab", "b", "abba")], policy.pad_token_id)

    def run() -> SampleOutput:
        with torch.no_grad():
            return smp.sample(policy, ids, mask, generator=generator(0), scorers=[scorer])

    out = run()
    _require(isinstance(out, SampleOutput), label, f"sample() returned {type(out).__name__}, expected SampleOutput")
    shape = (3, smp.completion_length)
    _require(tuple(out.completion_ids.shape) == shape, label, f"completion_ids {list(out.completion_ids.shape)}, expected {list(shape)}")
    _require(not bool((out.completion_ids == policy.mask_token_id).any()), label, "left mask tokens in the completions")
    _require(_same(run().completion_ids, out.completion_ids), label, "the same seed gave other completions")
    records = smp.records
    for record, value in (("unmask_step", out.unmask_step), ("token_logprobs", out.token_logprobs)):
        if record in records:
            _require(value is not None and tuple(value.shape) == shape, label, f"records {record} but returned {value!r}")
    if "scorer_logprobs" in records:
        ok = len(out.scorer_logprobs) == 1 and tuple(out.scorer_logprobs[0].shape) == shape
        _require(ok, label, "records scorer_logprobs but did not return one [B, L] tensor per scorer")
    if "exact_path" in records and out.token_logprobs is not None:
        with torch.no_grad():
            exact = ExactEstimator(ExactConfig()).log_likelihood(policy, out.batch, order=out.order)
        close = torch.allclose(out.token_logprobs.sum(-1), exact, atol=1e-4)
        _require(close, label, "records exact_path but its log-probs do not sum to the path likelihood along its order")


# ------------------------------------------------------------------------------------------------
# models, tasks and rewards


@_reported
def check_model(
    name: str, distribution: str | None = None, options: dict[str, Any] | None = None, registry: Registry | None = None
) -> None:
    """``logits`` are ``[B, T, V]`` and never put mass on the mask token; left padding leaves the real
    positions' logits unchanged; ``save_pretrained``/``from_pretrained`` round-trip the logits."""
    registry = registry or Registry()
    label = check_registered(registry, "models", name, distribution)
    policy = build(registry, "models", name, **(options or {})).eval()
    v, mask_id = policy.vocab_size, policy.mask_token_id
    tokens = [t for t in range(v) if t != mask_id][:4]
    row = torch.tensor([tokens + [mask_id, mask_id]])
    with torch.no_grad():
        logits = policy.logits(row)
        _require(tuple(logits.shape) == (1, row.shape[1], v), label, f"logits {list(logits.shape)} for input {list(row.shape)}")
        probs = torch.softmax(logits.float(), -1)
        _require(bool((probs[..., mask_id] < 1e-6).all()), label, "the mask token gets probability")
        padded = torch.cat([torch.full((1, 2), policy.pad_token_id), row], 1)
        attention = torch.cat([torch.zeros(1, 2, dtype=torch.bool), torch.ones_like(row, dtype=torch.bool)], 1)
        again = policy.logits(padded, attention)[:, 2:]
        _require(torch.allclose(again, logits, atol=1e-4), label, "left padding changes the logits of real positions")
        if policy.supports_lean_scoring:  # the lean path must give the full log-softmax's values
            scored = torch.zeros_like(row, dtype=torch.bool)
            scored[:, -2:] = True
            picked = torch.tensor([tokens[:1] * row.shape[1]])
            lean = policy.target_logprobs(row, None, scored, picked)
            full = torch.log_softmax(logits[scored].float(), -1).gather(-1, picked[scored][:, None]).squeeze(-1)
            _require(torch.allclose(lean, full, atol=1e-4), label, "lean scoring differs from the full log-softmax")
        with tempfile.TemporaryDirectory() as tmp:
            policy.save_pretrained(tmp)
            loaded = type(policy).from_pretrained(tmp).eval()
            _require(torch.allclose(loaded.logits(row), logits, atol=1e-6), label, "save/load changes the logits")


@_reported
def check_task(
    name: str,
    distribution: str | None = None,
    options: dict[str, Any] | None = None,
    registry: Registry | None = None,
    policy: Any = None,
) -> None:
    """Each split is a non-empty list of ``Example`` fixed by the config; prompts are text the policy
    encodes; ``score`` reports an ``accuracy`` in [0, 1] (or NaN); every reward resolves and
    returns one value per completion."""
    registry = registry or Registry()
    label = check_registered(registry, "tasks", name, distribution)
    task = build(registry, "tasks", name, **(options or {}))
    policy = policy if policy is not None else build(registry, "models", "tiny")
    for split in task.splits:
        examples = task.split(split)
        _require(isinstance(examples, list) and examples, label, f"split {split!r} is empty or not a list")
        _require(all(isinstance(e, Example) for e in examples), label, f"split {split!r} holds non-Example items")
        _require(examples == task.split(split), label, f"split {split!r} differs between two reads")
    sample = task.split(task.splits[0])[:3]
    length = (type(task).eval_lengths(task.config) or [8])[0]
    tokens = [t for t in range(policy.vocab_size) if t != policy.mask_token_id]
    ids = [[tokens[(i + d) % len(tokens)] for d in range(length)] for i in range(len(sample))]
    completions = [task.reference_completion(e) or task.decode(row, policy) for e, row in zip(sample, ids)]
    for example, completion in zip(sample, completions):
        _require(isinstance(task.format_prompt(example), str), label, "format_prompt() must return text")
        _require(all(isinstance(t, int) for t in task.encode(example, policy)), label, "encode() must return token ids")
        accuracy = task.score(example, completion).get("accuracy")
        ok = isinstance(accuracy, float) and (math.isnan(accuracy) or 0.0 <= accuracy <= 1.0)
        _require(ok, label, f"score() must report an accuracy in [0, 1] or NaN, got {accuracy!r}")
    columns: dict[str, list[Any]] = {"completion_ids": ids}
    for example in sample:
        for key, value in task.reward_columns(example).items():
            columns.setdefault(key, []).append(value)
    for reward_name, fn, _ in task.reward_functions(registry, required=False):
        values = fn([task.format_prompt(e) for e in sample], completions, **columns)
        _require(len(values) == len(sample), label, f"reward {reward_name!r} returned {len(values)} values for {len(sample)}")


@_reported
def check_reward(
    name: str,
    columns: dict[str, list[Any]],
    completions: list[str],
    distribution: str | None = None,
    registry: Registry | None = None,
) -> list[float | None]:
    """The reward, called TRL-style on ``completions`` with ``columns``, returns one float (or None)
    per completion, the same on a second call; returns the values."""
    registry = registry or Registry()
    label = check_registered(registry, "rewards", name, distribution)
    fn: Callable[..., Any] = registry.get("rewards", name)
    prompts = ["" for _ in completions]
    values = list(fn(prompts, completions, **columns))
    _require(len(values) == len(completions), label, f"returned {len(values)} values for {len(completions)} completions")
    ok = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
    _require(ok, label, f"values must be floats or None, got {values!r}")
    _require(list(fn(prompts, completions, **columns)) == values, label, "a second call gave other values")
    return values
