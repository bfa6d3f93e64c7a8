"""What a component of each registry group must provide, checked wherever it can be.

Three moments, from cheapest to latest:

1. **The class, when it is built** (``class_problem``): a model, sampler, estimator, objective or
   task is a class deriving from its group's interface, implements every abstract method and
   carries a pydantic ``Config`` with a ``name`` field; a reward is a plain function that accepts
   ``(prompts, completions, **columns)``.
2. **The instance, right after it is built** (``instance_problem``): ``from_config`` returned an
   instance of the interface; a policy's mask id lies inside its vocabulary.
3. **Each output, where it is used** (``guard``): a plugin's instance gets thin wrappers on the
   methods the rest of ddrl consumes, which check the type and shape of what they return
   (a sampler's ``completion_ids`` is ``[B, L]``; ``Task.load`` returns ``Example`` objects; a loss
   is a scalar) and raise ``PluginContractError`` naming the distribution. Exceptions raised
   inside a plugin get a note saying which component and distribution they came from.

Built-ins pass the same class and instance checks; output guards are installed on components from
other distributions only, so ddrl's own hot paths stay exactly as written. Policies get no output
guards: they are ``nn.Module``s that are deep-copied and wrapped by accelerate, and their shape
contract is exercised by every estimator call.

The guards keep only what must be checked at run time: outputs whose shape depends on the run's
data and settings and that would otherwise fail far from their cause. Behaviour that a plugin's
author can check once, before release — seeded determinism, gradients, state round trips, a short
training run — is the conformance kit's (``ddrl.testing``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache, wraps
from typing import Any, Callable

from pydantic import BaseModel

from ddrl.errors import PluginContractError

__all__ = ["PluginContractError", "class_problem", "instance_problem", "guard", "guard_reward", "interfaces"]


@cache
def interfaces() -> dict[str, type]:
    """Group -> the abstract class its components derive from (imported lazily: the registry is
    imported by modules these interfaces themselves import)."""
    from ddrl.estimators.base import LikelihoodEstimator
    from ddrl.models.base import MaskedDiffusionPolicy
    from ddrl.objectives.base import Objective
    from ddrl.samplers.base import Sampler
    from ddrl.tasks.base import Task

    return {
        "models": MaskedDiffusionPolicy,
        "samplers": Sampler,
        "estimators": LikelihoodEstimator,
        "objectives": Objective,
        "tasks": Task,
    }


def interface_path(group: str) -> str:
    """``ddrl.samplers.base.Sampler``, or the reward shape for ``rewards``."""
    if group == "rewards":
        return "a reward function (prompts, completions, **columns) -> list[float | None]"
    cls = interfaces()[group]
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------------------------------------
# 1. the class


def class_problem(group: str, obj: Any) -> str | None:
    """Why ``obj`` cannot serve as a component of ``group`` (None when it can)."""
    if group == "rewards":
        return _reward_problem(obj)
    interface = interfaces()[group]
    if not isinstance(obj, type):
        return f"expected a class deriving from {interface_path(group)}, got {type(obj).__name__} {obj!r}"
    if not issubclass(obj, interface):
        return (
            f"class {obj.__qualname__} does not derive from {interface_path(group)}; "
            f"declare it as `class {obj.__name__}({interface.__name__})`"
        )
    missing = sorted(getattr(obj, "__abstractmethods__", ()))
    if missing:
        return (
            f"class {obj.__qualname__} does not implement {', '.join(missing)} "
            f"(abstract in {interface.__name__})"
        )
    config = getattr(obj, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return f"class {obj.__qualname__} has no Config: set `Config = <a ddrl.config.ComponentConfig subclass>`"
    if "name" not in config.model_fields:
        return (
            f"{obj.__qualname__}.Config ({config.__qualname__}) has no `name` field; "
            "derive it from ddrl.config.ComponentConfig"
        )
    return None


def _reward_problem(fn: Any) -> str | None:
    shape = "a function (prompts, completions, **columns) -> list[float | None]"
    if isinstance(fn, type) or not callable(fn):
        return f"expected {shape}, got {type(fn).__name__} {fn!r}"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a C function without a signature: nothing to check
        return None
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return f"{_name(fn)}{signature} takes no **columns; rewards receive every example column by keyword ({shape})"
    try:
        signature.bind_partial([], [])
    except TypeError:
        return f"{_name(fn)}{signature} does not take prompts and completions positionally ({shape})"
    return None


# ------------------------------------------------------------------------------------------------
# 2. the instance


def instance_problem(group: str, obj: Any) -> str | None:
    """Why a freshly built ``obj`` breaks the contract of ``group`` (None when it does not)."""
    interface = interfaces()[group]
    if not isinstance(obj, interface):
        return f"building it returned {type(obj).__name__}, not an instance of {interface_path(group)}"
    if group == "models":
        mask, vocab = obj.mask_token_id, obj.vocab_size
        if not (isinstance(mask, int) and isinstance(vocab, int) and 0 <= mask < vocab):
            return f"mask_token_id {mask!r} is not a token id in [0, vocab_size={vocab!r})"
    return None


# ------------------------------------------------------------------------------------------------
# 3. the outputs


@dataclass(repr=False)
class _Guarded:
    """``owner.method(...)`` with its result checked. The method is looked up on the class at call
    time (a class-level patch still applies) and ``owner`` follows ``copy.deepcopy``'s memo, so a
    copy of a guarded component calls its own method."""

    owner: Any
    method: str
    check: Callable[[Any, Any, inspect.BoundArguments | None], str | None]
    label: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(type(self.owner), self.method)(self.owner, *args, **kwargs)
        except Exception as exc:
            _note(exc, f"raised inside {self.label}.{self.method}()")
            raise
        problem = self.check(result, self.owner, _bind(self.owner, self.method, args, kwargs))
        if problem is not None:
            raise PluginContractError(f"{self.label}: {self.method}() {problem}")
        return result

    def __repr__(self) -> str:
        return f"<{self.method}() of {self.label}, output checked>"


def guard(group: str, obj: Any, label: str) -> None:
    """Install output checks on the methods of ``obj`` that ddrl calls (``label`` names the
    component and its distribution in every message)."""
    for method, check in _CHECKS.get(group, {}).items():
        setattr(obj, method, _Guarded(obj, method, check, label))


def guard_reward(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    """``fn`` with its output checked: one float (or None) per completion."""

    @wraps(fn)
    def checked(prompts: list[str], completions: list[str], **columns: Any) -> Any:
        try:
            values = fn(prompts, completions, **columns)
        except Exception as exc:
            _note(exc, f"raised inside {label}")
            raise
        problem = _check_reward_values(values, len(completions))
        if problem is not None:
            raise PluginContractError(f"{label}: {problem}")
        return values

    return checked


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note") and text not in getattr(exc, "__notes__", ()):
        exc.add_note(text)


def _bind(owner: Any, method: str, args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    """The call's arguments by the interface's parameter names (None if they do not bind)."""
    for cls in type(owner).__mro__:
        if cls in interfaces().values() and method in vars(cls):
            try:
                return inspect.signature(vars(cls)[method]).bind(owner, *args, **kwargs)
            except TypeError:
                return None
    return None


def _arg(bound: inspect.BoundArguments | None, name: str) -> Any:
    return None if bound is None else bound.arguments.get(name)


def _type_name(value: Any) -> str:
    return type(value).__name__


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))


def _check_reward_values(values: Any, n: int) -> str | None:
    try:
        values = list(values)
    except TypeError:
        return f"returned {_type_name(values)}; expected a list of {n} floats (None = not applicable)"
    if len(values) != n:
        return f"returned {len(values)} values for {n} completions; expected one per completion"
    bad = [v for v in values if v is not None and not isinstance(v, (int, float)) and not hasattr(v, "__float__")]
    if bad:
        return f"returned {_type_name(bad[0])} {bad[0]!r}; each value must be a float or None"
    return None


def _check_sample(out: Any, sampler: Any, bound: inspect.BoundArguments | None) -> str | None:
    from ddrl.samplers.base import SampleOutput

    if not isinstance(out, SampleOutput):
        return f"returned {_type_name(out)}; expected ddrl.samplers.base.SampleOutput"
    prompt_ids, policy = _arg(bound, "prompt_ids"), _arg(bound, "policy")
    rows = prompt_ids.shape[0] if prompt_ids is not None else out.completion_ids.shape[0]
    expected = (rows, sampler.completion_length)
    for field in ("completion_ids", "unmask_step", "token_logprobs"):
        value = getattr(out, field)
        if value is not None and tuple(value.shape) != expected:
            return (
                f"returned {field} of shape {list(value.shape)}; expected [B, L] = {list(expected)} "
                f"({rows} prompts, completion_length {sampler.completion_length})"
            )
    if policy is not None and bool((out.completion_ids == policy.mask_token_id).any()):
        return "left mask tokens in completion_ids; every completion position must be filled"
    return None


def _check_views(views: Any, estimator: Any, bound: inspect.BoundArguments | None) -> str | None:
    from ddrl.estimators.base import MaskedViews

    if not isinstance(views, MaskedViews):
        return f"returned {_type_name(views)}; expected ddrl.estimators.base.MaskedViews"
    batch = _arg(bound, "batch")
    if batch is not None:
        b, length = batch.completion_ids.shape
        got = tuple(views.completion_masked.shape)
        if got[0] != b or got[2] != length:
            return f"returned views of shape {list(got)}; expected [B, R, L] with B = {b}, L = {length}"
    return None


def _check_logprobs(out: Any, estimator: Any, bound: inspect.BoundArguments | None) -> str | None:
    from ddrl.estimators.base import TokenLogProbs

    if not isinstance(out, TokenLogProbs):
        return f"returned {_type_name(out)}; expected ddrl.estimators.base.TokenLogProbs"
    if out.logprobs.shape != out.views.scored.shape:
        got, views = list(out.logprobs.shape), list(out.views.scored.shape)
        return f"returned logprobs of shape {got} for views of shape {views}"
    return None


def _check_state(out: Any, owner: Any, bound: inspect.BoundArguments | None) -> str | None:
    from ddrl.rows import RowState

    if isinstance(out, RowState):
        return None
    return f"returned {_type_name(out)}; expected the objective's state, a dataclass deriving from ddrl.rows.RowState"


def _check_weighed(out: Any, owner: Any, bound: inspect.BoundArguments | None) -> str | None:
    from ddrl.objectives.base import Weighed

    if not isinstance(out, Weighed):
        return f"returned {_type_name(out)}; expected ddrl.objectives.base.Weighed(state, metrics)"
    return _check_state(out.state, owner, bound)


def _check_loss(out: Any, objective: Any, bound: inspect.BoundArguments | None) -> str | None:
    import torch

    from ddrl.objectives.base import ObjectiveOutput

    if not isinstance(out, ObjectiveOutput):
        return f"returned {_type_name(out)}; expected ddrl.objectives.base.ObjectiveOutput(loss, metrics)"
    if not isinstance(out.loss, torch.Tensor) or out.loss.numel() != 1:
        shape = list(out.loss.shape) if isinstance(out.loss, torch.Tensor) else _type_name(out.loss)
        return f"returned a loss of shape {shape}; expected a scalar tensor"
    return None


def _check_examples(out: Any, task: Any, bound: inspect.BoundArguments | None) -> str | None:
    from ddrl.tasks.base import Example

    if not isinstance(out, (list, tuple)):
        return f"returned {_type_name(out)}; expected a list of ddrl.tasks.base.Example"
    for i, example in enumerate(out):
        if not isinstance(example, Example):
            return f"returned a list whose item {i} is {_type_name(example)}; expected ddrl.tasks.base.Example"
    return None


_CHECKS: dict[str, dict[str, Callable[[Any, Any, inspect.BoundArguments | None], str | None]]] = {
    "samplers": {"sample": _check_sample},
    "estimators": {"draw": _check_views, "score": _check_logprobs},
    "objectives": {"prepare": _check_state, "weigh": _check_weighed, "begin_iteration": _check_state, "loss": _check_loss},
    "tasks": {"load": _check_examples},
}
