"""What every CLI command shares: assembling a config from recipe + flags + ``--set``.

The assembly itself is library code (``ddrl.run.assemble_run``), so a run built from Python is the
run the CLI builds; this module only adapts the CLI's arguments to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from ddrl.config import RunConfig
from ddrl.registry import Registry
from ddrl.run import assemble_run

PLUGINS_HINT = "`ddrl plugins` lists the registered ones"


def assemble_config(
    registry: Registry,
    recipe: Path | dict[str, Any] | None,
    names: dict[str, str | None],
    overrides: Iterable[str],
    sections: Iterable[str] | None,
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """Recipe (if any) <- component-name flags <- ``extra`` field flags <- ``--set`` overrides
    (``ddrl.run.assemble_run``, whose docstring gives the rules)."""
    return assemble_run(
        recipe, names=names, overrides=list(overrides), extra=extra, registry=registry,
        sections=None if sections is None else list(sections),
    )


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
