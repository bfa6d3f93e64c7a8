"""``ddrl plugins``: every registered component, per group, with the distribution it comes from."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ddrl.registry import GROUPS, Registry


def plugins(
    group: str = typer.Option(None, "--group", "-g", help=f"Only this group ({', '.join(GROUPS)})."),
) -> None:
    """List models, samplers, estimators, objectives, tasks and rewards, and broken plugins."""
    console = Console()
    registry = Registry()
    problems = registry.load_all()
    groups = GROUPS if group is None else (group,)
    if group is not None and group not in GROUPS:
        console.print(f"[red]unknown group {group!r}; groups: {', '.join(GROUPS)}[/red]")
        raise typer.Exit(2)
    table = Table(title="ddrl components", show_lines=False)
    for column in ("group", "name", "distribution", "target", "status"):
        table.add_column(column, overflow="fold")
    for g in groups:
        for c in registry.components(g):
            status = "[green]ok[/green]" if c.error is None else f"[red]{escape(c.error)}[/red]"
            table.add_row(g, c.name, f"{c.distribution} {c.version}".strip(), c.target, status)
    console.print(table)
    if problems:
        console.print(f"[yellow]{len(problems)} plugin problem(s):[/yellow]")
        for p in problems:
            console.print(f"  [yellow]{escape(p.distribution)}[/yellow] {p.group}/{p.name}: {escape(p.message)}")
