"""Run configuration: pydantic models that YAML recipes mirror one to one.

A recipe has eight sections. Five name a registered component and carry that component's own
options (validated against the component's ``Config`` once the registry resolves the name)::

    model:     {name: tiny, path: null, ...}
    task:      {name: countdown, ...}
    sampler:   {name: block, max_completion_length: 32, steps: 32, ...}
    estimator: {name: elbo, num_samples: 4, ...}
    objective: {name: dmpo, alpha: 0.04, ...}

and three are fixed: ``train`` (field names follow TRL's GRPOConfig), ``eval`` and ``logging``.
Overrides are ``section.field=value`` strings whose value is parsed as YAML (``2``, ``0.1``,
``true``, ``[128, 256]``, ``null``), or from Python a mapping ``{"section.field": value}`` whose values
are taken as they are.

Resolving a config against the registry also applies what the components themselves say: a run
that sets no ``estimator`` section gets its objective's ``preferred_estimator``, and a component
class with an ``effective_config(config) -> config`` classmethod reports the options it will
actually use (a model loaded from ``path`` reports the checkpoint's architecture), so that a run's
recorded ``config.yaml`` is what was loaded. Assembling a whole run from a recipe, component names
and overrides (what ``ddrl train`` does) is ``ddrl.run.assemble_run``.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from ddrl.errors import ConfigError

__all__ = ["ConfigError", "RunConfig", "build_config", "resolve_config", "load_recipe"]

COMPONENT_SECTIONS: dict[str, str] = {
    # section -> registry group
    "model": "models",
    "task": "tasks",
    "sampler": "samplers",
    "estimator": "estimators",
    "objective": "objectives",
}


class ComponentLookup(Protocol):
    """What configuration needs of a registry (``ddrl.registry.Registry`` is one)."""

    def get(self, group: str, name: str) -> Any: ...

    def origin(self, group: str, name: str) -> str: ...


class ComponentConfig(BaseModel):
    """Options of one component. Subclasses (a component's ``Config``) forbid unknown fields;
    this base keeps them as extras until the registry says which subclass validates them."""

    model_config = ConfigDict(extra="allow")

    name: str


class StrictConfig(BaseModel):
    """Base of every fixed section and every component ``Config``: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(StrictConfig):
    """The RL loop. Names and meanings follow TRL's ``GRPOConfig`` where they coincide."""

    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = Field(100, ge=1, description="optimizer steps")
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="null disables clipping")
    per_device_train_batch_size: int = Field(8, ge=1, description="completions per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_generations: int = Field(8, ge=1, description="G, completions per prompt")
    num_iterations: int = Field(1, ge=1, description="mu, optimizer steps per rollout batch")
    max_prompt_length: int | None = Field(None, ge=1, description="left-truncate longer prompts")
    bf16: bool = False
    gradient_checkpointing: bool = False
    loss_micro_batch_size: int | None = Field(
        None, ge=1, description="masked views per forward in WDCE losses (dmpo, sft); the backward runs per "
        "micro-batch so their activations never coexist; null = all views of a chunk in one graph",
    )
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    max_bad_steps: int = Field(5, ge=1, description="stop after this many consecutive NaN/inf steps")
    reference_noise: float = Field(
        0.0, ge=0, le=1,
        description="supervised objectives (sft): share of the task's solutions replaced by wrong well-formed ones",
    )
    num_processes: int | None = Field(None, ge=1, description="fail unless exactly this many processes run")
    sharding: Literal["none", "fsdp2"] = Field(
        "none", description="none: every process holds the whole model (DDP over processes); fsdp2: parameters, "
        "gradients and optimizer state sharded over the processes (docs/training-llms.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_completions(cls, data: Any) -> Any:
        """Runs written before the data source followed the objective carry ``completions``
        (sampled/reference): what ``Objective.supervised`` says now. Accepted and ignored."""
        if isinstance(data, dict) and "completions" in data:
            data = {k: v for k, v in data.items() if k != "completions"}
            warnings.warn(
                "train.completions is ignored: the objective decides (sft trains on the task's reference "
                "completions, RL objectives on samples)", DeprecationWarning, stacklevel=2,
            )
        return data

    @model_validator(mode="after")
    def _check_save_steps(self) -> TrainConfig:
        if self.save_steps % self.num_iterations:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of num_iterations ({self.num_iterations}): "
                "checkpoints are written between rollout batches so that a resumed run is exact"
            )
        return self


class EvalConfig(StrictConfig):
    """Held-out evaluation: greedy decoding at several generation lengths and seeds."""

    split: str = "test"
    lengths: list[int] = Field(default_factory=lambda: [128, 256, 512])
    block_length: int = Field(32, ge=1)
    steps_per_length: float = Field(
        0.5, gt=0, le=1, description="steps = length * this (d1: 0.5, DMPO: 1.0)"
    )
    seeds: list[int] = Field(default_factory=lambda: [0])
    num_examples: int | None = Field(None, ge=1, description="null = the whole split")
    batch_size: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0)
    results_file: str = "results/results.jsonl"
    during_training: bool = Field(
        False, description="`ddrl train` evaluates the held-out split before and after training"
    )
    eval_steps: int | None = Field(None, ge=1, description="with during_training: also every this many steps")


class LoggingConfig(StrictConfig):
    """Where a run's metrics go. ``RUN_DIR/metrics.jsonl`` is always written, every step (resume and
    the curves read it); ``report_to`` adds experiment trackers through accelerate's tracker classes
    (a missing tracker package is an error naming it; tensorboard, in the default list, is skipped)."""

    logging_steps: int = Field(
        1, ge=1, description="trackers get the metrics of every this-many steps (metrics.jsonl keeps every "
        "step; held-out evaluations always go)",
    )
    report_to: list[Literal["jsonl", "tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=lambda: ["jsonl", "tensorboard"]
    )
    log_completions: bool = Field(
        False, description="at each logging step, a table of the rollout's completions (prompt, completion, "
        "reward, accuracy) to RUN_DIR/completions.jsonl and to the trackers that show tables",
    )
    run_name: str | None = Field(None, description="the run's name in the trackers; null = train.output_dir's name")
    project: str | None = Field(
        None, description="wandb/trackio project and MLflow experiment; null = $WANDB_PROJECT or "
        "$MLFLOW_EXPERIMENT_NAME where set, else 'ddrl'",
    )
    progress: bool = True


class RunConfig(StrictConfig):
    """The whole run. ``resolve_config`` turns every component section into its typed Config."""

    model: SerializeAsAny[ComponentConfig] = ComponentConfig(name="tiny")
    task: SerializeAsAny[ComponentConfig] = ComponentConfig(name="countdown")
    sampler: SerializeAsAny[ComponentConfig] = ComponentConfig(name="block")
    estimator: SerializeAsAny[ComponentConfig] = ComponentConfig(name="elbo")
    objective: SerializeAsAny[ComponentConfig] = ComponentConfig(name="dmpo")
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def to_yaml(self) -> str:
        return dump_yaml(self)


# ------------------------------------------------------------------------------------------------
# building and overriding


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.max_steps=2"`` -> (["train", "max_steps"], 2). The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"override {item!r} must name a section and a field, e.g. train.max_steps=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


Overrides = Iterable[str] | Mapping[str, Any]
"""``["section.field=value", ...]`` (values parsed as YAML) or ``{"section.field": value}`` (taken as is)."""


def override_items(overrides: Overrides) -> list[tuple[list[str], Any, str]]:
    """(path, value, text for messages) of each override, in order."""
    if isinstance(overrides, Mapping):
        items = []
        for key, value in overrides.items():
            path = [p for p in str(key).strip().split(".") if p]
            if len(path) < 2:
                raise ConfigError(f"override {key!r} must name a section and a field, e.g. train.max_steps")
            items.append((path, value, str(key)))
        return items
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of section.field=value strings, got the string {overrides!r}")
    return [(*parse_override(item), item) for item in overrides]


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Return a copy of the raw recipe dict with ``section.field=value`` overrides applied."""
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    sections = list(RunConfig.model_fields)
    for path, value, item in override_items(overrides):
        if path[0] not in sections:
            raise ConfigError(_unknown(path[0], sections, what="section", where=item))
        if isinstance(out.get(path[0]), str):  # shorthand `objective: dmpo`
            out[path[0]] = {"name": out[path[0]]}
        node = out.setdefault(path[0], {})
        for key in path[1:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key} is not a mapping")
        node[path[-1]] = value
    return out


def build_config(
    raw: dict[str, Any] | None = None,
    overrides: Overrides = (),
    registry: ComponentLookup | None = None,
    sections: Iterable[str] | None = None,
) -> RunConfig:
    """Validate a raw recipe (plus overrides) into a ``RunConfig``.

    With a registry, the component sections listed in ``sections`` (all five by default) are
    resolved to their components' typed ``Config`` so that every option is checked now.
    """
    raw = apply_overrides(raw or {}, overrides)
    if not isinstance(raw, dict):
        raise ConfigError("a recipe must be a mapping of sections")
    for section in COMPONENT_SECTIONS:
        value = raw.get(section)
        if isinstance(value, str):  # shorthand: `objective: dmpo`
            raw[section] = {"name": value}
        elif isinstance(value, dict) and "name" not in value:
            value["name"] = _default_name(section, raw, registry)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, RunConfig)) from None
    if registry is not None:
        config = resolve_config(config, registry, sections)
    return config


def resolve_config(
    config: RunConfig, registry: ComponentLookup, sections: Iterable[str] | None = None
) -> RunConfig:
    """Validate each component section against its registered component's ``Config``.

    An ``estimator`` the run does not set (absent from its recipe) is the objective's
    ``preferred_estimator`` where it has one, and a component whose class has an
    ``effective_config`` classmethod gets the options it reports (e.g. the architecture of the
    checkpoint a model loads), so the resolved config is the run as it will be built.
    """
    sections = list(sections if sections is not None else COMPONENT_SECTIONS)
    if "estimator" in sections:
        config = _with_preferred_estimator(config, registry)
    updates = {}
    for section in sections:
        spec: ComponentConfig = getattr(config, section)
        component = registry.get(COMPONENT_SECTIONS[section], spec.name)
        config_cls = getattr(component, "Config", None)
        if config_cls is None:
            raise ConfigError(
                f"{section} {spec.name!r} ({registry.origin(COMPONENT_SECTIONS[section], spec.name)})"
                " has no Config class"
            )
        try:
            updates[section] = config_cls.model_validate(spec.model_dump())
        except ValidationError as err:
            raise ConfigError(
                format_validation_error(err, config_cls, prefix=section, component=spec.name)
            ) from None
        effective = getattr(component, "effective_config", None)
        if callable(effective):
            updates[section] = effective(updates[section])
    return config.model_copy(update=updates)


def _default_name(section: str, raw: dict[str, Any], registry: ComponentLookup | None) -> str:
    """The component a section that gives options but no name is: the objective's preferred
    estimator for ``estimator`` (with a registry), else ``RunConfig``'s default."""
    default: str = RunConfig.model_fields[section].default.name
    if section != "estimator" or registry is None:
        return default
    objective = raw.get("objective")
    name = objective.get("name") if isinstance(objective, dict) else objective
    try:
        preferred = getattr(registry.get(COMPONENT_SECTIONS["objective"], name or RunConfig.model_fields["objective"].default.name), "preferred_estimator", None)
    except Exception:  # an unknown objective is reported where the objective section is resolved
        return default
    return preferred or default


def _with_preferred_estimator(config: RunConfig, registry: ComponentLookup) -> RunConfig:
    """The objective's ``preferred_estimator`` in place of a default (unset) estimator section."""
    if "estimator" in config.model_fields_set:
        return config
    try:
        preferred = getattr(registry.get(COMPONENT_SECTIONS["objective"], config.objective.name), "preferred_estimator", None)
    except Exception:  # an unknown objective is reported where the objective section is resolved
        return config
    if not preferred or preferred == config.estimator.name:
        return config
    return config.model_copy(update={"estimator": ComponentConfig(name=preferred)})


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe as a raw dict (validated later by ``build_config``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def dump_yaml(config: RunConfig) -> str:
    data = config.model_dump(mode="json", serialize_as_any=True)
    return yaml.safe_dump(data, sort_keys=False)


# ------------------------------------------------------------------------------------------------
# error messages


def format_validation_error(
    err: ValidationError, model_cls: type[BaseModel], prefix: str = "", component: str = ""
) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        field = ".".join([prefix, *loc] if prefix else loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model_cls, loc[:-1])
            owner = f" of {prefix} {component!r}" if component else ""
            lines.append(
                f"{field}: unknown field{owner}; {_suggest(loc[-1], allowed)}"
                f"allowed: {', '.join(allowed)}"
            )
        elif e["type"] == "missing":
            lines.append(f"{field}: required field is missing")
        else:
            lines.append(f"{field}={e.get('input')!r}: {e['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _allowed_fields(model_cls: type[BaseModel], loc: list[str]) -> list[str]:
    cls: Any = model_cls
    for part in loc:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = field.annotation
    fields = getattr(cls, "model_fields", {})
    return sorted(fields)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _unknown(name: str, choices: list[str], what: str, where: str) -> str:
    return f"unknown {what} {name!r} in {where!r}; {_suggest(name, choices)}available: {', '.join(choices)}"
