"""A run directory's files are whole or absent, and one run uses a directory at a time.

* ``write_text_atomic`` / ``replace_dir``: write beside the target, then rename over it (a rename is
  atomic on POSIX filesystems), so a killed process leaves the old file or the new one, never half.
* ``RunLock``: an exclusive ``flock`` on ``RUN_DIR/.lock`` held for the run's lifetime; the kernel
  releases it when the process dies, even by ``kill -9``, so a stale lock never blocks a resume.
* ``read_run_config``: the recipe a run recorded, refusing an empty or torn ``config.yaml`` (a resume
  from it would silently train with defaults).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ddrl.errors import ConfigError

LOCK_FILE = ".lock"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (the old content or the new, never a mix)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def staging_dir(final: Path) -> Path:
    """An empty directory beside ``final`` to write into before ``replace_dir``."""
    tmp = Path(final).with_name(Path(final).name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` directory to ``final``, replacing an older one."""
    final = Path(final)
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)  # two renames: a reader sees the old directory or the new one
        Path(tmp).rename(final)
        shutil.rmtree(old)
    else:
        Path(tmp).rename(final)


class RunInUse(ConfigError):
    """Another process is using the run directory."""


class RunLock:
    """An exclusive lock on a run directory for as long as this object lives (or ``release``)."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        self.path = Path(run_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunInUse(
                f"{run_dir} is in use by {holder}: wait for that run to finish, or choose another "
                "train.output_dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        import fcntl

        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


def read_run_config(run_dir: Path, name: str = "config.yaml") -> dict[str, Any]:
    """The recipe ``RUN_DIR/config.yaml`` recorded; an error naming the file when it is missing,
    empty, not YAML or not a whole recorded run (no ``model`` or ``train`` section)."""
    import yaml

    path = Path(run_dir) / name
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} does not exist")
    text = path.read_text()
    problem = None
    try:
        raw = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raw, problem = None, f"is not valid YAML ({str(err).splitlines()[0]})"
    if problem is None and not isinstance(raw, dict):
        problem = "is empty" if not text.strip() else "is not a mapping of sections"
    if problem is None and not {"model", "train"} <= set(raw):  # type: ignore[arg-type]
        problem = "lacks its model or train section (torn?)"
    if problem is not None:
        raise ConfigError(
            f"cannot resume: {path} {problem}. It records the run's settings; resuming without them would "
            "train with defaults. Restore the file (a copy of the recipe the run started from, with the "
            "same --set options) and resume again."
        )
    return raw  # type: ignore[return-value]
