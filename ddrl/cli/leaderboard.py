"""``ddrl leaderboard``: the paper-style table from evaluation records (terminal, Markdown, CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ddrl.training.run_dir import write_text_atomic
from ddrl.config import RunConfig
from ddrl.evaluation.leaderboard import build_leaderboard
from ddrl.evaluation.results import ResultStore


def leaderboard(
    results: Optional[Path] = typer.Option(None, "--results", help="Results file (default: eval.results_file)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where leaderboard.md/.csv go (default: beside the results)."),
) -> None:
    """Rows = model x objective (one per run and weights), columns = task x length (x step convention,
    x sampler), mean ± std over seeds."""
    console = Console()
    store = ResultStore(results or RunConfig().eval.results_file)
    try:
        records = store.latest()
    except ValueError as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    if not records:
        console.print(f"[red]no records in {store.path}; run `ddrl eval` first[/red]")
        raise typer.Exit(2)
    board = build_leaderboard(records)
    table = Table(title=f"accuracy (%), or the metric a column names — {store.path}")
    table.add_column("model / objective")
    for col in board.columns:
        table.add_column(escape(col), justify="right")  # `countdown[toy]` is not markup
    for row in board.rows:
        cells = []
        for col in board.columns:
            cell = board.cells.get((row, col))
            text = escape(cell.text()) if cell else "–"
            cells.append(f"[bold green]{text}[/bold green]" if cell and board.best.get(col) == row and len(board.rows) > 1 else text)
        table.add_row(escape(row), *cells)
    console.print(table)
    target = out_dir or store.path.parent
    target.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "leaderboard.md", board.markdown())  # whole or the previous one
    write_text_atomic(target / "leaderboard.csv", board.csv())
    console.print(f"written {target / 'leaderboard.md'} and {target / 'leaderboard.csv'}")
