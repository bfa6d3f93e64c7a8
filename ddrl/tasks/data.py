"""Where task examples come from: local files, the Hugging Face ``datasets`` cache, or a seed.

Local paths (a task's ``data_path``) may be

- a file — ``.jsonl``, ``.json`` (a list of records), ``.parquet`` or ``.csv`` — used for every
  split (a warning says so, since train and test are then the same records);
- a path containing ``{split}``, e.g. ``data/{split}.jsonl``;
- a directory holding ``train.jsonl``/``test.jsonl`` (or ``.json``, ``.parquet``, ``.csv``),
  Hugging Face parquet shards (``main/test-00000-of-00001.parquet``), or one file whose name
  contains the split (``4x4_test_sudoku.csv``).

Missing data is a ``ConfigError`` that names what to provide; nothing here touches the network
(docs/tasks.md: datasets load from a local path or the HF cache; CI runs offline).

Generated splits (Countdown, Sudoku) are disjoint by construction: each puzzle's group hashes,
with the seed, to a side (one in ``TEST_SHARE`` to test), and a split keeps only puzzles of its
side, so train never contains a test puzzle whatever the sizes asked for.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ddrl.config import ConfigError

Record = dict[str, Any]
T = TypeVar("T")
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
TEST_SHARE = 8
STALL_LIMIT = 20_000  # draws in a row without a new puzzle before giving up


# ------------------------------------------------------------------------------------------------
# local files


def read_split(data_path: str | Path, split: str, what: str) -> list[Record]:
    """Records of ``split`` under ``data_path`` (see the module docstring for the layouts).

    ``what`` names the task in error messages (``"gsm8k"``).
    """
    text = str(data_path)
    if "{split}" in text:
        return read_records(Path(text.format(split=split)), what)
    path = Path(text).expanduser()
    if path.is_file():
        warnings.warn(
            f"{what}: data_path {path} is one file, used for the {split!r} split and every other "
            "split; give a directory with train/test files to keep them apart",
            stacklevel=2,
        )
        return read_records(path, what)
    if path.is_dir():
        files = _split_files(path, split)
        if not files:
            raise ConfigError(
                f"{what}: no {split!r} data in {path}; expected {split}.jsonl (or .json, .parquet,"
                f" .csv), parquet shards {split}-*.parquet, or one file whose name contains {split!r}"
            )
        return [r for f in files for r in read_records(f, what)]
    raise ConfigError(f"{what}: data_path {path} does not exist")


def _split_files(directory: Path, split: str) -> list[Path]:
    for suffix in SUFFIXES:
        exact = directory / f"{split}{suffix}"
        if exact.is_file():
            return [exact]
    shards = sorted(directory.glob(f"**/{split}-*.parquet"))
    if shards:
        return shards
    named = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and split in p.stem)
    if len(named) > 1:
        listing = ", ".join(p.name for p in named)
        raise ConfigError(f"several files in {directory} look like the {split!r} split: {listing}")
    return named


def read_records(path: Path, what: str) -> list[Record]:
    """The records of one file; CSV cells stay strings (a puzzle ``0120…`` keeps its zeros)."""
    if not path.is_file():
        raise ConfigError(f"{what}: {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path, what)
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ConfigError(f"{what}: {path} must hold a JSON list of records")
            for i, record in enumerate(data):
                if not isinstance(record, dict):
                    raise ConfigError(
                        f"{what}: {path}: record {i} of the list is a JSON {_kind(record)}, not an object; "
                        'every record must be an object such as {"prompt": ..., "response": ...}'
                    )
            return data
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            return _read_parquet(path, what)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{what}: cannot read {path}: {err}") from None
    raise ConfigError(f"{what}: {path} has suffix {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path, what: str) -> list[Record]:
    """One JSON object per line (blank lines skipped); a line that is not valid JSON, or valid JSON
    but not an object, is a ``ConfigError`` naming ``file:line``."""
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{what}: {path}:{n} is not valid JSON ({err.msg} at column {err.colno}); a JSONL file "
                    "holds one JSON object per line"
                ) from None
            if not isinstance(record, dict):
                raise ConfigError(
                    f"{what}: {path}:{n} is a JSON {_kind(record)}, not an object; every line of a JSONL file "
                    'must be one record such as {"prompt": ..., "response": ...}'
                )
            out.append(record)
    return out


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type (for messages)."""
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_parquet(path: Path, what: str) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{what}: reading {path} needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 - pyarrow raises several unrelated types
        raise ConfigError(f"{what}: cannot read parquet file {path}: {err}") from None


def field(record: Record, *names: str, what: str) -> Any:
    """The first of ``names`` present in ``record`` (case-insensitive), else a ConfigError."""
    lowered = {str(k).lower(): v for k, v in record.items()}
    for name in names:
        if name.lower() in lowered and lowered[name.lower()] is not None:
            return lowered[name.lower()]
    raise ConfigError(
        f"{what}: a record has none of the fields {', '.join(names)}; its fields: "
        f"{', '.join(map(str, record))}"
    )


# ------------------------------------------------------------------------------------------------
# the Hugging Face cache


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Offline mode for one call: no network request, so no retry loop, when data are absent.

    ``datasets`` and ``huggingface_hub`` read these flags when a request is made; setting the
    environment variable instead would only work before they are imported, and would also
    silence later model downloads.
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def load_hf_cached(
    dataset: str, config: str | None, split: str, what: str, cache_dir: str | None = None
) -> list[Record]:
    """Records of a dataset already in the local ``datasets`` cache (never downloads).

    Any failure becomes one ``ConfigError`` saying how to get the data, instead of a traceback
    from inside ``datasets``.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{what}: set data_path, or install `datasets` to use its cache") from None
    try:
        with _hub_offline(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = datasets.load_dataset(dataset, config, split=split, cache_dir=cache_dir)
            return [dict(r) for r in loaded]
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not cached"
        name = f"{dataset!r}" + (f" (config {config!r})" if config else "")
        raise ConfigError(
            f"{what}: the {split!r} split is not available offline: set task.data_path to a JSONL "
            f"or parquet file (or a directory with {split}.jsonl), or download the HF dataset "
            f"{name} into the cache first (python -c \"import datasets; datasets.load_dataset("
            f"{dataset!r}{', ' + repr(config) if config else ''})\"). "
            f"[{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]"
        ) from None


# ------------------------------------------------------------------------------------------------
# generated splits


def on_test_side(key: str, seed: int) -> bool:
    """Whether a generated puzzle belongs to the test side (one key in ``TEST_SHARE``)."""
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % TEST_SHARE == 0


def generate_split(
    draw: Callable[[random.Random], tuple[str, str, T] | None],
    *,
    namespace: str,
    split: str,
    seed: int,
    count: int,
) -> list[T]:
    """``count`` puzzles of ``split``'s side, drawn from a stream seeded by
    ``(namespace, seed, split)``.

    ``draw`` returns ``(group, key, puzzle)`` or None to skip: the group decides the side (so a
    Countdown group, numbers as a multiset plus target, never straddles train and test), the key
    must be new within the split (so the same numbers in another order is another prompt).
    """
    rng = random.Random(f"{namespace}|{seed}|{split}")
    want_test = split == "test"
    seen: set[str] = set()
    out: list[T] = []
    draws = stalled = 0
    while draws < 100 * count + 10_000 and stalled < STALL_LIMIT:
        draws, stalled = draws + 1, stalled + 1
        drawn = draw(rng)
        if drawn is None:
            continue
        group, key, item = drawn
        if key in seen or on_test_side(group, seed) != want_test:
            continue
        seen.add(key)
        out.append(item)
        stalled = 0
        if len(out) == count:
            return out
    raise ConfigError(
        f"{namespace}: found only {len(out)} distinct {split} puzzles in {draws} draws; ask "
        f"for fewer (num_generated_{split})"
    )
