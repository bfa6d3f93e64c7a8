"""Component discovery through Python entry points.

Six groups: ``ddrl.models``, ``ddrl.samplers``, ``ddrl.estimators``, ``ddrl.objectives``,
``ddrl.tasks``, ``ddrl.rewards``. ddrl registers its built-ins in its own ``pyproject.toml`` exactly
as a plugin does::

    [project.entry-points."ddrl.objectives"]
    my_objective = "my_package.objective:MyObjective"

Entry points are imported lazily, on first use. Whatever is wrong with a plugin is reported with
its distribution's name and never stops the other components from working:

* an import that fails is recorded; looking the name up raises ``RegistryError`` with the error;
* a name that clashes with a built-in is ignored (the built-in wins) and reported as shadowed;
* a name registered by two plugins is ambiguous: neither is used, looking it up raises
  ``RegistryError`` naming both distributions (ddrl will not pick one by ``sys.path`` order);
* a component that breaks its group's interface raises ``PluginContractError`` when it is built
  (or, for a reward, looked up) or when its output is used (``ddrl.contracts``).
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

from ddrl.contracts import class_problem, guard, guard_reward, instance_problem
from ddrl.errors import PluginContractError, RegistryError

__all__ = ["Component", "PluginProblem", "Registry", "RegistryError", "PluginContractError"]

GROUPS = ("models", "samplers", "estimators", "objectives", "tasks", "rewards")
GROUP_PREFIX = "ddrl."
BUILTIN_DISTRIBUTION = "ddrl"


@dataclass
class Component:
    """One registered entry point."""

    group: str
    name: str
    target: str  # "module:attr"
    distribution: str
    version: str
    entry_point: md.EntryPoint | None = field(default=None, repr=False)
    obj: Any = field(default=None, repr=False)
    error: str | None = None  # why the import failed
    rivals: list[tuple[str, str]] = field(default_factory=list)  # other plugins' (distribution, target)
    checked: Any = field(default=None, repr=False)  # a plugin reward wrapped by its output check

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def label(self) -> str:
        """``sampler 'fancy' from distribution 'ddrl-fancy' (ddrl_fancy.sampler:Fancy)``."""
        return f"{self.group[:-1]} {self.name!r} from distribution {self.distribution!r} ({self.target})"


@dataclass
class PluginProblem:
    """Something wrong with a plugin, reported by ``ddrl plugins`` and in lookup errors."""

    group: str
    name: str
    distribution: str
    message: str


class Registry:
    """The components visible through entry points (or given explicitly, for tests).

    Args:
        entry_points: override discovery (an iterable of ``importlib.metadata.EntryPoint``).
    """

    def __init__(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        self._components: dict[str, dict[str, Component]] = {g: {} for g in GROUPS}
        self.problems: list[PluginProblem] = []
        eps = list(entry_points) if entry_points is not None else _discover()
        # Built-ins first so that a plugin reusing a built-in name never shadows it.
        eps.sort(key=lambda ep: _dist_name(ep) != BUILTIN_DISTRIBUTION)
        for ep in eps:
            self._add_entry_point(ep)

    # ---------------------------------------------------------------------------------------
    def _add_entry_point(self, ep: md.EntryPoint) -> None:
        group = ep.group[len(GROUP_PREFIX) :]
        dist, version = _dist_name(ep), _dist_version(ep)
        existing = self._components[group].get(ep.name)
        if existing is not None:
            if existing.target == ep.value and existing.distribution == dist:
                return  # the same distribution seen twice on sys.path
            if existing.builtin:
                message = (
                    f"name {ep.name!r} in {ep.group} is already registered by {existing.distribution} "
                    f"({existing.target}); {dist}'s {ep.value} is ignored: built-ins always win, "
                    f"so {dist} must register it under another name"
                )
            else:
                existing.rivals.append((dist, ep.value))
                message = (
                    f"name {ep.name!r} in {ep.group} is registered by both {existing.distribution} "
                    f"({existing.target}) and {dist} ({ep.value}); neither is used until one of them "
                    "is uninstalled or renames it"
                )
            self.problems.append(PluginProblem(group, ep.name, dist, message))
            return
        self._components[group][ep.name] = Component(group, ep.name, ep.value, dist, version, ep)

    def register(self, group: str, name: str, obj: Any, distribution: str = "<runtime>") -> None:
        """Register an object directly (for notebooks and tests; plugins use entry points)."""
        self._check_group(group)
        if name in self._components[group]:
            raise RegistryError(f"{group} {name!r} is already registered")
        target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
        self._components[group][name] = Component(group, name, target, distribution, "", obj=obj)

    # ---------------------------------------------------------------------------------------
    def names(self, group: str) -> list[str]:
        """Names registered in a group (including ones whose import fails)."""
        self._check_group(group)
        return sorted(self._components[group])

    def components(self, group: str) -> list[Component]:
        self._check_group(group)
        return [self._components[group][n] for n in self.names(group)]

    def origin(self, group: str, name: str) -> str:
        c = self._components[group].get(name)
        return "unregistered" if c is None else f"{c.distribution} {c.version}".strip()

    def get(self, group: str, name: str) -> Any:
        """The registered object (class or function); raises ``RegistryError`` with alternatives.

        A reward is checked here (it is never built); a plugin's reward comes back wrapped by a
        check of its output.
        """
        component = self._loaded(group, name)
        if group != "rewards":
            return component.obj
        problem = class_problem(group, component.obj)
        if problem is not None:
            raise PluginContractError(f"{component.label} is not a usable reward: {problem}")
        if component.builtin:
            return component.obj
        if component.checked is None:
            component.checked = guard_reward(component.obj, component.label)
        return component.checked

    def build(self, group: str, config: Any, **kwargs: Any) -> Any:
        """Construct a component from its validated Config (``config.name`` picks it).

        The class is checked against its group's interface first, the instance after; a plugin's
        instance gets output checks (``ddrl.contracts.guard``). Every failure names the distribution.
        """
        if group == "rewards":
            raise RegistryError("rewards are plain functions: look them up with get('rewards', name)")
        component = self._loaded(group, config.name)
        problem = class_problem(group, component.obj)
        if problem is not None:
            raise PluginContractError(f"{component.label} cannot be built: {problem}")
        try:
            obj = component.obj.from_config(config, **kwargs)
        except Exception as exc:
            if not component.builtin and hasattr(exc, "add_note"):
                exc.add_note(f"raised while building {component.label}")
            raise
        problem = instance_problem(group, obj)
        if problem is not None:
            raise PluginContractError(f"{component.label} is broken: {problem}")
        if not component.builtin:
            guard(group, obj, component.label)
        return obj

    def load_all(self) -> list[PluginProblem]:
        """Import every component; return all problems (import failures and name clashes)."""
        for group in GROUPS:
            for component in self._components[group].values():
                if component.obj is None and component.error is None:
                    self._load(component)
        return list(self.problems)

    def check_all(self) -> list[PluginProblem]:
        """``load_all`` plus every imported component that breaks its group's interface."""
        problems = self.load_all()
        for group in GROUPS:
            for component in self._components[group].values():
                problem = self.interface_problem(component)
                if problem is not None:
                    problems.append(PluginProblem(group, component.name, component.distribution, problem))
        return problems

    def interface_problem(self, component: Component) -> str | None:
        """Why an imported component cannot serve its group (None if it can or did not import)."""
        if component.obj is None:
            return None
        problem = class_problem(component.group, component.obj)
        return None if problem is None else f"{component.target} breaks the interface: {problem}"

    # ---------------------------------------------------------------------------------------
    def _load(self, component: Component) -> None:
        try:
            assert component.entry_point is not None
            component.obj = component.entry_point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never break the others
            last = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
            component.error = f"{type(exc).__name__}: {exc}{where}"
            self.problems.append(
                PluginProblem(
                    component.group, component.name, component.distribution,
                    f"failed to import {component.target}: {component.error}",
                )
            )

    def _loaded(self, group: str, name: str) -> Component:
        """The component, imported; ``RegistryError`` if unknown, ambiguous or unimportable."""
        self._check_group(group)
        component = self._components[group].get(name)
        if component is None:
            raise RegistryError(self._unknown_message(group, name))
        if component.rivals:
            owners = [(component.distribution, component.target), *component.rivals]
            listing = ", ".join(f"{d} ({t})" for d, t in owners)
            raise RegistryError(
                f"{group[:-1]} {name!r} is registered by several plugins: {listing}; ddrl uses none of "
                f"them: uninstall all but one (pip uninstall <distribution>)"
            )
        if component.obj is None:
            if component.error is None:
                self._load(component)
            if component.error is not None:
                raise RegistryError(
                    f"{group[:-1]} {name!r} from distribution {component.distribution!r} failed to "
                    f"load ({component.target}): {component.error}"
                )
        return component

    def _unknown_message(self, group: str, name: str) -> str:
        available = self.names(group)
        close = difflib.get_close_matches(name, available, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        listing = ", ".join(available) if available else "none registered"
        return f"unknown {group[:-1]} {name!r}; {hint}available: {listing}"

    @staticmethod
    def _check_group(group: str) -> None:
        if group not in GROUPS:
            raise RegistryError(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")


def _discover() -> list[md.EntryPoint]:
    eps = md.entry_points()
    found = []
    for group in GROUPS:
        found.extend(eps.select(group=GROUP_PREFIX + group))
    return found


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "<unknown>"


def _dist_version(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else ""
