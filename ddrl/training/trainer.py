"""The RL loop every objective shares: rollouts -> rewards -> objective -> optimizer (docs/architecture.md).

One *rollout batch* (``num_prompts x G`` completions over all processes) serves
``num_iterations`` (mu) optimizer steps; each optimizer step accumulates gradients over this
process's chunks (``gradient_accumulation_steps`` micro-batches). ``max_steps`` counts optimizer
steps. All randomness is keyed by (seed, purpose, rollout, iteration, chunk), so a run resumed from a
checkpoint, or split over more processes with the same global batch, computes the same numbers.
"""

from __future__ import annotations

import math
import os
import random
from contextlib import nullcontext
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ddrl.config import ConfigError, RunConfig, dump_yaml, resolve_config
from ddrl.objectives.base import Objective, ObjectiveContext, RolloutBatch
from ddrl.registry import Registry
from ddrl.training.curves import plot_curves
from ddrl.training import sharding
from ddrl.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_objective_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from ddrl.training.distributed import TrainedPolicy, make_accelerator, sharding_enabled
from ddrl.training.logger import MetricsLogger, read_metrics
from ddrl.training.optim import build_optimizer, set_learning_rate
from ddrl.training.preflight import check_sequence_lengths  # issue 16, item 6
from ddrl.rows import RowState
from ddrl.training.run_dir import RunLock, replace_dir, staging_dir, write_text_atomic
from ddrl.training.rollout import ChunkStats, PromptSchedule, RolloutPlan, generate_chunk, reference_chunk
from ddrl.training.seeding import derive_seed, keyed_generator

CONFIG_FILE = "config.yaml"
FINAL_DIR = "final"


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the settings that lower it."""


def out_of_memory_advice(phase: str, cfg: RunConfig, sharded: bool) -> str:
    """What to change when ``phase`` ("rollouts" or "update") ran out of memory, given ``cfg``."""
    tc = cfg.train
    batch = (f"lower train.per_device_train_batch_size (now {tc.per_device_train_batch_size}) and raise "
             "train.gradient_accumulation_steps to keep the global batch")
    if phase == "rollouts":
        tips = [batch, f"a shorter sampler.max_completion_length (now {cfg.sampler.max_completion_length})"]
        if cfg.sampler.name != "fast":
            tips.append("sampler: fast with cache: prefix (keys/values instead of full passes)")
        if sharded:
            tips.append("generation holds the full weights on every device (train.sharding=fsdp2 gathers them)")
    else:
        tips = []
        if not tc.gradient_checkpointing:
            tips.append("train.gradient_checkpointing=true")
        if tc.loss_micro_batch_size is None:
            tips.append("train.loss_micro_batch_size (e.g. 4: the loss's backward per 4 masked views)")
        if getattr(cfg.model, "lora", "n/a") is None:
            tips.append("model.lora={} (only the adapters train; the reference costs nothing)")
        if not sharded:
            tips.append("train.sharding=fsdp2 over several devices (weights, gradients and optimizer state sharded)")
        tips.append(batch)
    lines = "\n".join(f"  - {tip}" for tip in tips)
    return (f"out of memory during the {phase}. Settings that lower it:\n{lines}\n"
            "`ddrl train --dry-run` with the same options prints the memory plan per process.")


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    steps: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    heldout_before: float | None = None  # the held-out metric before training (eval.during_training) ...
    heldout_after: float | None = None  # ... and after
    heldout_metric: str = "accuracy"  # its name: greedy accuracy, or the task's own (ess for ising)
    seconds: float = 0.0
    is_main_process: bool = True  # False on the other processes of a distributed run (they stay quiet)


@dataclass
class _Rollout:
    """A rollout batch on this process: chunks as generated, all of them joined (``local``), and
    the objective's state over the local rows."""

    index: int
    chunks: list[RolloutBatch]
    local: RolloutBatch
    stats: list[ChunkStats]
    state: RowState
    metrics: dict[str, float]


class Trainer:
    """Build every component from a ``RunConfig`` and train.

    Args:
        config: the run (component sections may still be unresolved).
        registry: where components come from (entry points by default).
        resume: continue the run in ``train.output_dir`` from its latest checkpoint.
        callbacks: ``fn(trainer, step) -> dict | None`` after each optimizer step (every process);
            returned entries join that step's metrics (e.g. held-out accuracy, exact divergences).
    """

    def __init__(
        self,
        config: RunConfig,
        registry: Registry | None = None,
        *,
        resume: bool = False,
        console: Console | None = None,
        callbacks: Sequence[Callable[[Trainer, int], dict[str, Any] | None]] = (),  # type: ignore[assignment]
    ) -> None:
        self.registry = registry or Registry()
        self.callbacks = list(callbacks)
        self.cfg = resolve_config(config, self.registry)
        self.console = console or Console()
        self.resume = resume
        tc = self.cfg.train
        self.accelerator = make_accelerator(tc.bf16, tc.num_processes)
        self.device = self.accelerator.device
        self.sharded = sharding_enabled(tc.sharding, self.accelerator.num_processes, os.environ, self.console)
        self.run_dir = Path(tc.output_dir)
        self._prepare_run_dir()
        self._build_components()
        self.plan = RolloutPlan.from_batch_sizes(
            tc.per_device_train_batch_size, tc.gradient_accumulation_steps, self.accelerator.num_processes,
            tc.num_generations, self.accelerator.process_index,
        )
        self.examples = self.task.split("train")
        # --- preflight (issue 16, item 6): prompts + completions must fit the model, checked before training
        check_sequence_lengths(self.policy, self.task, self.examples, self.sampler.completion_length,
                               tc.max_prompt_length, self.cfg.eval)
        # --- end preflight
        self.schedule = PromptSchedule(len(self.examples), tc.seed)
        lc = self.cfg.logging
        self.logger = MetricsLogger(
            self.run_dir, lc.report_to, self.accelerator.is_main_process, run_name=lc.run_name, project=lc.project,
            logging_steps=lc.logging_steps, log_completions=lc.log_completions, config=self.cfg.model_dump(mode="json"),
        )

    # ------------------------------------------------------------------------------------------
    # set-up

    def _prepare_run_dir(self) -> None:
        config_path = self.run_dir / CONFIG_FILE
        # one run per directory at a time (released when the run ends or the process dies)
        self._lock = RunLock(self.run_dir) if self.accelerator.is_main_process else None
        if self.resume and not config_path.exists():
            raise ConfigError(f"cannot resume: {config_path} does not exist")
        if not self.resume and (latest_checkpoint(self.run_dir) is not None or (self.run_dir / "metrics.jsonl").exists()):
            raise ConfigError(
                f"{self.run_dir} already holds a run; resume it with `ddrl train --resume {self.run_dir}` "
                "or choose another train.output_dir"
            )
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(config_path, dump_yaml(self.cfg))
            write_text_atomic(self.run_dir / "run.json", _run_info(self.accelerator.num_processes, self.sharded))
        self.accelerator.wait_for_everyone()

    def _build_components(self) -> None:
        cfg, reg = self.cfg, self.registry
        self.objective: Objective = reg.build("objectives", cfg.objective)
        self.estimator = reg.build("estimators", cfg.estimator)
        self.sampler = reg.build("samplers", cfg.sampler)
        self.task = reg.build("tasks", cfg.task)
        self.reward_fns = self.task.reward_functions(reg, required=not self.objective.supervised)
        _check_compatible(self.objective, self.estimator, self.sampler, cfg)
        torch.manual_seed(cfg.train.seed)
        policy = reg.build("models", cfg.model)
        if cfg.train.gradient_checkpointing:
            if not policy.supports_gradient_checkpointing:
                raise ConfigError(
                    f"model {cfg.model.name!r} does not support gradient checkpointing: set train.gradient_checkpointing=false"
                )
            policy.set_gradient_checkpointing(True)
        # the published reference: the starting weights, frozen (with LoRA the base model, a view)
        self.ref = policy.frozen_reference().to(self.device) if self.objective.needs_reference else None
        if self.sharded:  # FSDP2 in place; accelerate only starts processes and gathers metrics
            sharding.shard(policy.to(self.device), cfg.train.bf16)
            if self.ref is not None and sharding.owns_parameters(self.ref):
                sharding.shard(self.ref, cfg.train.bf16)
            self.wrapped, self.optimizer = policy, build_optimizer(policy.parameters(), cfg.train)
        else:
            optimizer = build_optimizer(policy.parameters(), cfg.train)
            self.wrapped, self.optimizer = self.accelerator.prepare(policy.to(self.device), optimizer)
        self.policy = self.accelerator.unwrap_model(self.wrapped)
        self.trained = TrainedPolicy(self.wrapped, self.policy)

    def _gathered(self) -> Any:
        """Full parameters through rollouts and evaluation in a sharded run (``sharding.gathered``)."""
        return sharding.gathered(self.policy, self.ref) if self.sharded else nullcontext()

    # ------------------------------------------------------------------------------------------
    # the loop

    def train(self) -> TrainResult:
        try:
            return self._train()
        finally:
            self.release()

    def release(self) -> None:
        """Give the run directory back (``train`` does at its end; the process's death does too)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __del__(self) -> None:
        self.release()

    def _train(self) -> TrainResult:
        tc = self.cfg.train
        start = time.perf_counter()
        step = self._restore()
        before = self._heldout(step) if step == 0 else None
        bad_steps = 0
        rollout: _Rollout | None = None
        with self._progress() as progress:
            task_id = progress.add_task("train", total=tc.max_steps, completed=step, reward=math.nan, acc=math.nan, loss=math.nan)
            while step < tc.max_steps:
                iteration = step % tc.num_iterations
                phase = "rollouts"
                try:
                    if rollout is None or iteration == 0:
                        rollout = self._rollout(step // tc.num_iterations)
                    phase = "update"
                    metrics, ok = self._optimizer_step(rollout, iteration, step)
                    metrics.update(self.policy.auxiliary_metrics())  # e.g. MoE router balance
                except torch.OutOfMemoryError as err:
                    raise OutOfMemory(out_of_memory_advice(phase, self.cfg, self.sharded)) from err
                bad_steps = 0 if ok else bad_steps + 1
                if bad_steps >= tc.max_bad_steps:
                    raise TrainingDiverged(f"{bad_steps} consecutive steps had a non-finite loss or gradient; stopping")
                step += 1
                for callback in self.callbacks:
                    metrics.update(callback(self, step) or {})
                metrics["elapsed"] = time.perf_counter() - start
                self.logger.log(step, metrics)
                self.logger.log_completions(step, rollout.index, rollout.stats, rollout.local.rewards)
                progress.update(task_id, completed=step, reward=metrics["reward"], acc=metrics["accuracy"], loss=metrics["loss"])
                # held-out rows of a step are logged before its checkpoint: a resume from it keeps them
                every = self.cfg.eval.eval_steps
                if every and step % every == 0 and step < tc.max_steps:
                    self._heldout(step)
                if step % tc.save_steps == 0 and step % tc.num_iterations == 0 and step < tc.max_steps:
                    self._save(step)
        after = self._heldout(step)
        result = self._finish(step)
        result.heldout_before, result.heldout_after = before, after
        result.heldout_metric = self.task.heldout_metric
        result.seconds = time.perf_counter() - start
        result.is_main_process = self.accelerator.is_main_process
        return result

    def _heldout(self, step: int) -> float | None:
        """Greedy held-out accuracy at ``eval.lengths[0]`` (main process), logged at ``step``; for a
        task that measures the policy itself (``Task.measure_policy``), its ``heldout_metric``."""
        ec = self.cfg.eval
        if not ec.during_training:
            return None
        with self._gathered():
            accuracy = self._heldout_main(step)
            self.accelerator.wait_for_everyone()
        return accuracy

    def _heldout_main(self, step: int) -> float | None:
        ec = self.cfg.eval
        accuracy = None
        if self.accelerator.is_main_process:
            from ddrl.evaluation.evaluate import evaluate

            measured = self.task.measure_policy(self.policy, self.sampler, ec.seeds[0] if ec.seeds else 0)
            if measured is not None:
                accuracy = self._log_measured(step, measured)
            else:
                length = self.sampler.completion_length if not ec.lengths else ec.lengths[0]
                result = evaluate(self.policy, self.task, length, ec, seed=ec.seeds[0] if ec.seeds else 0)
                accuracy = result.accuracy
                self.logger.log(step, {"eval_accuracy": accuracy, "eval_length": length, "eval_examples": result.num_examples})
                if self.cfg.logging.progress:
                    self.console.print(f"held-out accuracy at step {step}: {accuracy:.3f} ({result.num_examples} examples, L={length})")
        return accuracy

    def _log_measured(self, step: int, measured: dict[str, float]) -> float:
        name = self.task.heldout_metric
        self.logger.log(step, {f"eval_{k}": v for k, v in measured.items()})
        if self.cfg.logging.progress:
            rest = ", ".join(f"{k} {v:.4g}" for k, v in measured.items() if k != name)
            self.console.print(f"held-out {name} at step {step}: {measured[name]:.3f} ({rest})")
        return measured[name]

    def _restore(self) -> int:
        if not self.resume:
            return 0
        path = latest_checkpoint(self.run_dir)
        if path is None:  # started over: every row is written again (the step-0 evaluation too)
            self.logger.truncate_after(-1)
            return 0
        state = load_checkpoint(path, self.policy, self.optimizer)
        carried = load_objective_state(path, self.accelerator.process_index)
        if carried is None:
            self.console.print(f"[yellow]{path} holds the objective's state (e.g. DMPO's replay pool) of another number "
                               "of processes: it starts empty[/yellow]")
        else:
            self.objective.load_state_dict(carried)
        self.logger.truncate_after(state["step"])
        if self.accelerator.is_main_process:
            self.console.print(f"resumed from {path} at step {state['step']}")
        return int(state["step"])

    def _save(self, step: int) -> None:
        objective = self._objective_states()
        if self.sharded:
            save_sharded_checkpoint(
                self.run_dir, step, self.policy, self.optimizer, {}, self.accelerator.is_main_process,
                self.accelerator.wait_for_everyone, keep=self.cfg.train.save_total_limit, objective=objective,
            )
            return
        if self.accelerator.is_main_process:
            save_checkpoint(self.run_dir, step, self.policy, self.optimizer, {}, keep=self.cfg.train.save_total_limit,
                            objective=objective)
        self.accelerator.wait_for_everyone()

    def _objective_states(self) -> list[dict[str, torch.Tensor]]:
        """Every process's ``Objective.state_dict()`` (on CPU), in rank order."""
        mine = {k: v.detach().cpu() for k, v in self.objective.state_dict().items()}
        if self.accelerator.num_processes == 1:
            return [mine]
        from accelerate.utils import gather_object

        return list(gather_object([mine]))

    def _finish(self, step: int) -> TrainResult:
        final = self.run_dir / FINAL_DIR
        if step % self.cfg.train.num_iterations == 0:
            self._save(step)
        main = self.accelerator.is_main_process
        staged = staging_dir(final) if main else None  # final/ appears whole or not at all
        if self.sharded:  # gather the weights; the main process writes them through an unsharded twin
            twin = self.registry.build("models", self.cfg.model) if main else None
            sharding.export(self.policy, twin, staged)  # type: ignore[arg-type]
        elif main:
            self.policy.save_pretrained(staged)  # type: ignore[arg-type]
        if main:
            replace_dir(staged, final)  # type: ignore[arg-type]
            plot_curves(self.run_dir)
        self.accelerator.wait_for_everyone()
        self.logger.close()
        return TrainResult(self.run_dir, final, step, read_metrics(self.run_dir))

    def _context(self, generator: torch.Generator | None, trained: bool = False) -> ObjectiveContext:
        tc = self.cfg.train

        def backward(partial: torch.Tensor) -> None:
            self.accelerator.backward(partial / tc.gradient_accumulation_steps)

        return ObjectiveContext(
            policy=self.trained if trained else self.policy,  # type: ignore[arg-type]
            estimator=self.estimator,
            ref_policy=self.ref,
            gather=self.accelerator.gather,
            process_index=self.accelerator.process_index,
            generator=generator,
            num_iterations=tc.num_iterations,
            loss_micro_batch_size=tc.loss_micro_batch_size,
            backward=backward if trained else None,
            sampler_records=frozenset(self.sampler.records),
        )

    def _key(self, *keys: object) -> torch.Generator:
        return keyed_generator(self.cfg.train.seed, *keys, device=self.device)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _rollout(self, index: int) -> _Rollout:
        """Generate, reward and prepare this process's chunks of rollout batch ``index``."""
        with self._gathered():
            return self._rollout_gathered(index)

    def _rollout_gathered(self, index: int) -> _Rollout:
        plan = self.plan
        prompt_idx = self.schedule.indices(index, plan.num_prompts)
        scorers = self.objective.rollout_scorers(self._context(None))
        chunks, stats, states = [], [], []
        for c in plan.my_chunks():
            rows = plan.chunk_rows(c)
            examples = [self.examples[prompt_idx[r // plan.num_generations]] for r in rows]
            groups = [index * plan.num_prompts + r // plan.num_generations for r in rows]
            chunk, st = self._chunk(index, c, examples, groups, scorers)
            chunks.append(chunk)
            stats.append(st)
            states.append(self.objective.prepare(chunk, self._context(self._key("prepare", index, c))))
        local = RolloutBatch.cat(chunks)
        weighed = self.objective.weigh(local, type(states[0]).cat(states), self._context(None))
        metrics = {**weighed.metrics, **self._rollout_metrics(local, stats)}
        return _Rollout(index, chunks, local, stats, weighed.state, metrics)

    def _chunk(
        self, index: int, chunk: int, examples: list, groups: list[int], scorers: list
    ) -> tuple[RolloutBatch, ChunkStats]:
        tc = self.cfg.train
        if self.objective.supervised:  # the task's solutions are the data (SFT)
            rng = random.Random(derive_seed(tc.seed, "reference", index, chunk))
            return reference_chunk(
                self.policy, self.task, examples, groups, self.reward_fns, rng,
                self.sampler.completion_length, tc.reference_noise, tc.max_prompt_length,
            )
        share = self.objective.reference_share
        return generate_chunk(
            self.policy, self.sampler, self.task, examples, groups, self.reward_fns,
            self._key("rollout", index, chunk), scorers, tc.max_prompt_length,
            self.plan.from_reference(chunk, share) if share > 0 else None, self.ref,
        )

    def _rollout_metrics(self, local: RolloutBatch, stats: list[ChunkStats]) -> dict[str, float]:
        gather = self.accelerator.gather
        rewards = gather(local.rewards.float())
        acc = gather(torch.tensor([a for s in stats for a in s.accuracy], device=self.device))
        length = gather(torch.tensor([n for s in stats for n in s.completion_length], device=self.device).float())
        out = {
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            "accuracy": acc.mean().item(),
            "completion_length": length.mean().item(),
        }
        for name, values in local.reward_components.items():
            out[f"rewards/{name}"] = torch.nanmean(gather(values.float())).item()
        return out

    def _optimizer_step(self, rollout: _Rollout, iteration: int, step: int) -> tuple[dict[str, Any], bool]:
        tc = self.cfg.train
        self.policy.train()
        with torch.no_grad():
            ctx = self._context(self._key("iteration", rollout.index, iteration))
            rollout.state = self.objective.begin_iteration(rollout.local, rollout.state, ctx, iteration)
        lr = set_learning_rate(self.optimizer, step, tc)
        losses, loss_metrics = [], []
        chunks = self.plan.my_chunks()
        for i, (c, chunk) in enumerate(zip(chunks, rollout.chunks)):
            rows = slice(i * tc.per_device_train_batch_size, (i + 1) * tc.per_device_train_batch_size)
            ctx = self._context(self._key("loss", rollout.index, iteration, c), trained=True)
            sync = i == len(chunks) - 1
            unsynced = sharding.gradient_sync(self.wrapped, sync) if self.sharded else self.accelerator.no_sync(self.wrapped)
            with (nullcontext() if sync else unsynced):
                out = self.objective.loss(chunk, rollout.state.index(rows), ctx, iteration)
                if not out.backward_done:
                    self.accelerator.backward(out.loss / tc.gradient_accumulation_steps)
            losses.append(out.loss.detach())
            loss_metrics.append(out.metrics)
        max_norm = tc.max_grad_norm if tc.max_grad_norm is not None else math.inf
        if self.sharded:
            grad_norm = sharding.clip_grad_norm(self.policy.parameters(), max_norm)
        else:
            grad_norm = self.accelerator.clip_grad_norm_(self.policy.parameters(), max_norm)
        loss = torch.stack(losses).mean()
        bad = (~torch.isfinite(loss) | ~torch.isfinite(torch.as_tensor(grad_norm))).float().to(self.device)
        ok = self.accelerator.reduce(bad, "max").item() == 0
        if ok:
            self.optimizer.step()
        else:
            self.console.print(f"[yellow]step {step + 1}: non-finite loss or gradient; update skipped[/yellow]")
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {**rollout.metrics, **self._mean_over_processes(loss_metrics)}
        metrics.update(
            loss=self.accelerator.reduce(loss, "mean").item(),
            grad_norm=float(grad_norm),
            learning_rate=lr,
            num_completions=(rollout.index + 1) * self.plan.num_prompts * self.plan.num_generations,
            skipped=not ok,
        )
        return metrics, ok

    def _mean_over_processes(self, dicts: list[dict[str, float]]) -> dict[str, float]:
        keys = sorted({k for d in dicts for k in d})
        if not keys:
            return {}
        local = torch.tensor([[d.get(k, math.nan) for k in keys] for d in dicts], device=self.device).nanmean(0)
        return dict(zip(keys, self.accelerator.reduce(local, "mean").tolist()))

    def _progress(self) -> Progress:
        enabled = self.cfg.logging.progress and self.accelerator.is_main_process
        return Progress(
            TextColumn("[bold]train[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]:.3f}  acc {task.fields[acc]:.3f}  loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )


def _check_compatible(objective: Objective, estimator: Any, sampler: Any, cfg: RunConfig) -> None:
    missing = set(objective.needs_estimator) - set(estimator.provides)
    if missing:
        raise ConfigError(
            f"objective {cfg.objective.name!r} needs an estimator providing {sorted(missing)}; "
            f"{cfg.estimator.name!r} provides {sorted(estimator.provides)}"
        )
    missing = set(objective.needs_sampler) - set(sampler.records)
    if missing:
        raise ConfigError(
            f"objective {cfg.objective.name!r} (as configured) needs a sampler that records {sorted(missing)}; "
            f"{cfg.sampler.name!r} records {sorted(sampler.records) or 'nothing'} (try sampler: ancestral)"
        )


def _run_info(num_processes: int, sharded: bool = False) -> str:
    import json
    import platform

    import ddrl

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(ddrl.__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    info = {
        "ddrl_version": ddrl.__version__,
        "git_revision": rev,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "num_processes": num_processes,
        "sharding": "fsdp2" if sharded else "none",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return json.dumps(info, indent=1) + "\n"
