"""The ``ddrl`` command line. Each command lives in its own module and stays thin: it parses,
builds a config, and calls library functions that are equally usable from Python."""

from __future__ import annotations

import typer

from ddrl.cli import eval as eval_cli
from ddrl.cli import leaderboard, plugins, pretrain, sample, sft, train
from ddrl.cli import lm_eval as lm_eval_cli

app = typer.Typer(
    name="ddrl",
    help="RL fine-tuning of masked diffusion language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("plugins")(plugins.plugins)
app.command("sample")(sample.sample)
app.command("train")(train.train)
app.command("eval")(eval_cli.eval_command)
app.command("leaderboard")(leaderboard.leaderboard)
app.command("pretrain")(pretrain.pretrain)
app.command("sft")(sft.sft)
app.command("lm-eval")(lm_eval_cli.lm_eval_command)


def _print_version(value: bool) -> None:
    if value:
        from ddrl import __version__

        typer.echo(f"ddrl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """RL fine-tuning of masked diffusion language models."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
