"""``ddrl plugins``: every registered component, per group, with the distribution it comes from,
and every plugin problem (failed import, name clash, broken interface) with its distribution."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ddrl.registry import GROUPS, Component, Registry


def plugins(
    group: str = typer.Option(None, "--group", "-g", help=f"Only this group ({', '.join(GROUPS)})."),
    check: bool = typer.Option(
        False, "--check", help="Exit with status 1 when any plugin has a problem (failed import, name clash, "
        "broken interface), so that CI can gate on it."),
) -> None:
    """List models, samplers, estimators, objectives, tasks and rewards, and broken plugins."""
    console = Console()
    if group is not None and group not in GROUPS:
        console.print(f"[red]unknown group {group!r}; groups: {', '.join(GROUPS)}[/red]")
        raise typer.Exit(2)
    registry = Registry()
    problems = registry.check_all()
    groups = GROUPS if group is None else (group,)
    table = Table(title="ddrl components", show_lines=False)
    for column in ("group", "name", "distribution", "target", "status"):
        table.add_column(column, overflow="fold")
    for g in groups:
        for c in registry.components(g):
            table.add_row(g, c.name, f"{c.distribution} {c.version}".strip(), c.target, _status(registry, c))
    console.print(table)
    problems = [p for p in problems if p.group in groups]
    if problems:
        console.print(f"[yellow]{len(problems)} plugin problem(s):[/yellow]")
        for p in problems:
            console.print(f"  [yellow]{escape(p.distribution)}[/yellow] {p.group}/{p.name}: {escape(p.message)}")
    if check:
        if problems:
            names = ", ".join(sorted({p.distribution for p in problems}))
            console.print(f"[red]ddrl plugins --check: {len(problems)} problem(s) in {escape(names)}[/red]")
            raise typer.Exit(1)
        console.print("[green]ddrl plugins --check: no plugin problems[/green]")


def _status(registry: Registry, c: Component) -> str:
    if c.error is not None:
        return f"[red]import failed: {escape(c.error)}[/red]"
    if c.rivals:
        others = ", ".join(d for d, _ in c.rivals)
        return f"[red]ambiguous: also registered by {escape(others)}[/red]"
    problem = registry.interface_problem(c)
    return "[green]ok[/green]" if problem is None else f"[red]{escape(problem)}[/red]"
