"""Local Hugging Face checkpoint directories in their *published* layout: read, check, write.

A checkpoint directory (as ``huggingface-cli download ORG/NAME --local-dir DIR`` leaves it) holds::

    config.json                       the publisher's own keys (LLaDA: d_model, n_layers, ...)
    model.safetensors                 one file, or shards listed in
    model.safetensors.index.json      {"weight_map": {tensor name: shard file}}
    tokenizer files                   tokenizer.json or vocab.json + merges.txt, tokenizer_config.json

ddrl's native ``llada`` / ``dream`` policies run on transformers' maintained modules, whose
parameter names differ from the published ones. A policy gives a ``Renamer`` (published name ->
internal name and back) so that loading accepts the published names and saving writes them again.
Nothing here executes code from the directory (no ``trust_remote_code``) or unpickles anything.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ddrl.errors import ConfigError

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# files of a checkpoint directory that are weights or the model config, i.e. not copied verbatim on save
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")


class CheckpointError(ConfigError):
    """A checkpoint directory whose content does not match what its config.json describes (a
    ``ConfigError``, hence a ``ValueError``: every CLI command reports it as one line)."""


@contextmanager
def open_safetensors(file: Path, device: str = "cpu") -> Iterator[Any]:
    """``safe_open`` that reports a truncated or corrupt file as a ``CheckpointError`` naming it.

    safetensors checks the header and that the data cover exactly what it declares when it opens a
    file (no extra read), so an interrupted download or save is caught here, before any tensor."""
    try:
        handle = safe_open(str(file), framework="pt", device=device)
    except SafetensorError as err:
        raise CheckpointError(corrupt_message(file, err)) from None
    with handle as f:
        yield f


def corrupt_message(file: Path, err: BaseException) -> str:
    """What to say about a weights file safetensors cannot open."""
    try:
        size = f"{file.stat().st_size:,} bytes"
    except OSError:
        size = "unreadable"
    return (
        f"{file} is truncated or corrupt ({size}; safetensors: {err}): the download or save that wrote it "
        "did not finish. Download or save it again (a run's final/ is written by `ddrl train`; a checkpoint "
        "by `huggingface-cli download ORG/NAME --local-dir DIR`)"
    )


@dataclass(frozen=True)
class Renamer:
    """Maps published tensor names to a module's own parameter names and back.

    ``to_internal`` returns None for a name that does not belong to the architecture.
    ``ignored`` names (e.g. a stored rotary ``inv_freq``) are skipped silently when loading.
    """

    to_internal: Callable[[str], str | None]
    to_published: Callable[[str], str]
    ignored: Callable[[str], bool] = field(default=lambda name: False)


# ------------------------------------------------------------------------------------------------
# locating and reading


def resolve_checkpoint_dir(path: str | Path, example_repo: str) -> Path:
    """The local directory of a checkpoint: ``path`` itself, or the Hugging Face cache snapshot of
    a repo id already downloaded there (never a network access)."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return candidate
    text = str(path)
    cached = cached_snapshot(text)
    if cached is not None:
        return cached
    raise FileNotFoundError(
        f"model directory {text} does not exist. ddrl loads local checkpoints only: download one first, "
        f"e.g. `huggingface-cli download {example_repo} --local-dir DIR`, then pass --model-path DIR"
    )


def cached_snapshot(text: str) -> Path | None:
    """The Hugging Face cache's snapshot of repo id ``text`` (``owner/name``) if it is already
    downloaded, else None; never a network access."""
    if text.count("/") != 1 or Path(text).expanduser().exists():
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or no huggingface_hub)
        return None


def read_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: a checkpoint directory needs config.json next to its weights")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    return config


def weight_map(path: Path) -> dict[str, str]:
    """Published tensor name -> the file (relative to ``path``) that stores it."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            mapping = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} has no valid weight_map: {err}") from None
        by_file: dict[str, list[str]] = defaultdict(list)
        for name, file in mapping.items():
            by_file[file].append(name)
        for file, names in sorted(by_file.items()):
            if Path(file).is_absolute() or ".." in Path(file).parts:
                raise CheckpointError(f"{index} names an unsafe shard path {file!r}")
            if not (path / file).is_file():
                raise FileNotFoundError(
                    f"{path / file} is missing: {INDEX_FILE} lists it for {len(names)} tensors "
                    f"(e.g. {sorted(names)[0]}); the download is incomplete"
                )
        return dict(mapping)
    single = path / SINGLE_WEIGHTS_FILE
    if single.is_file():
        with open_safetensors(single) as f:
            return {name: SINGLE_WEIGHTS_FILE for name in f.keys()}
    raise FileNotFoundError(
        f"no weights in {path}: expected {SINGLE_WEIGHTS_FILE}, or {INDEX_FILE} and the shards it lists"
    )


def load_weights(
    module: nn.Module, path: Path, renamer: Renamer, dtype: torch.dtype, not_stored: Iterable[str] = ()
) -> None:
    """Load every parameter of ``module`` from the checkpoint at ``path``, converted to ``dtype``.

    The module may live on the meta device: tensors are *assigned* (no second copy in memory).
    ``not_stored`` are internal names the checkpoint does not hold (tied weights).
    Every tensor is checked: unknown names, missing names and wrong shapes are errors that name
    the tensor and its file.
    """
    expected = dict(module.state_dict(keep_vars=True))
    skip = set(not_stored)
    loaded: dict[str, Tensor] = {}
    files: dict[str, list[str]] = defaultdict(list)
    for name, file in weight_map(path).items():
        files[file].append(name)
    for file, names in sorted(files.items()):
        with open_safetensors(path / file) as f:
            available = set(f.keys())
            for published in names:
                if renamer.ignored(published):
                    continue
                if published not in available:
                    raise CheckpointError(f"{path / file} does not contain {published}, although {INDEX_FILE} says so")
                internal = renamer.to_internal(published)
                if internal is None or internal not in expected or internal in skip:
                    raise CheckpointError(
                        f"unexpected tensor {published} in {path / file}: it is not part of the "
                        f"architecture {path / CONFIG_FILE} describes"
                    )
                tensor = f.get_tensor(published)
                want = tuple(expected[internal].shape)
                if tuple(tensor.shape) != want:
                    raise CheckpointError(
                        f"{published} in {path / file} has shape {tuple(tensor.shape)}, but "
                        f"{path / CONFIG_FILE} implies {want}"
                    )
                loaded[internal] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    missing = sorted(set(expected) - set(loaded) - skip)
    if missing:
        shown = ", ".join(renamer.to_published(m) for m in missing[:3])
        raise CheckpointError(
            f"{path} lacks {len(missing)} tensor(s) that {CONFIG_FILE} calls for, e.g. {shown}"
        )
    module.load_state_dict(loaded, strict=False, assign=True)


# ------------------------------------------------------------------------------------------------
# writing


def save_weights(
    state: dict[str, Tensor], path: Path, renamer: Renamer, max_shard_bytes: int = 5 * 1024**3
) -> list[str]:
    """Write ``state`` (internal names) under published names: one ``model.safetensors``, or
    ``model-0000i-of-0000n.safetensors`` shards plus the index when it exceeds ``max_shard_bytes``.
    Files are written under temporary names and renamed; stale weight files are removed.
    Returns the written file names."""
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for internal, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][renamer.to_published(internal)] = tensor.detach().contiguous().cpu()
        size += nbytes
    n = len(shards)
    names = [SINGLE_WEIGHTS_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for name, shard in zip(names, shards):
        tmp = path / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / name)
    for stale in path.iterdir():
        is_weights = stale.name in (SINGLE_WEIGHTS_FILE, INDEX_FILE) or SHARD_PATTERN.match(stale.name)
        if is_weights and stale.name not in names:
            stale.unlink()
    if n > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {
            "metadata": {"total_size": total},
            "weight_map": {key: name for name, shard in zip(names, shards) for key in sorted(shard)},
        }
        write_json(path / INDEX_FILE, index)
    return names


def write_json(file: Path, payload: dict[str, Any]) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(file)


def copy_auxiliary_files(source: Path, target: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Copy a checkpoint's non-weight files (tokenizer, chat template, generation config, README,
    the publisher's code files — copied, never run) so that a saved directory keeps the published
    layout. config.json and weights are written by the caller."""
    if source.resolve() == target.resolve():
        return []
    copied = []
    for item in sorted(source.iterdir()):
        skipped = item.name in (CONFIG_FILE, INDEX_FILE, *exclude) or item.name.endswith(_WEIGHT_SUFFIXES)
        if not item.is_file() or skipped:
            continue
        shutil.copyfile(item, target / item.name)  # follows the symlinks of a hub cache snapshot
        copied.append(item.name)
    return copied


# ------------------------------------------------------------------------------------------------
# tokenizer


# the files a tokenizer directory may hold (copied verbatim on save; left out of a token-only save)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
)
# any one of these makes a directory hold a tokenizer (the files load_tokenizer looks for)
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# written by save_pretrained of a policy loaded without a tokenizer: loading the directory back needs none
TOKEN_ONLY_FILE = "ddrl_token_only.json"


class MissingTokenizerError(FileNotFoundError):
    """A directory that holds none of the files of a tokenizer (``TOKENIZER_MARKERS``)."""


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_MARKERS)


def is_tokenizer_file(name: str) -> bool:
    """A tokenizer file, or the publisher's tokenizer code (``tokenization_*.py``, never run)."""
    return name in TOKENIZER_FILES or (name.startswith("tokenization_") and name.endswith(".py"))


def resolve_tokenizer_dir(path: str | Path) -> Path:
    """The directory of an explicit tokenizer (``model.tokenizer``): a directory, one of its tokenizer
    files (its directory is used), or a repo id already in the Hugging Face cache (never a download)."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate.parent
    if candidate.is_dir():
        return candidate
    text = str(path)
    cached = cached_snapshot(text)
    if cached is not None:
        return cached
    raise FileNotFoundError(
        f"tokenizer path {text} (model.tokenizer) does not exist: give the directory that holds the tokenizer "
        f"files ({', '.join(TOKENIZER_MARKERS)})"
    )


def load_tokenizer(path: Path, fallback: type | None = None, hint: str = "") -> Any:
    """The checkpoint's tokenizer, without running code from the directory.

    ``AutoTokenizer`` handles the usual layouts (tokenizer.json). A tokenizer_config.json that
    names a custom class (Dream's ``DreamTokenizer``, which needs remote code) is loaded with
    ``fallback``, the transformers class it derives from (Qwen2's byte-level BPE for Dream).
    A directory with no tokenizer file raises ``MissingTokenizerError`` naming the files looked
    for, followed by ``hint`` (what to do instead).
    """
    from transformers import AutoTokenizer

    if not has_tokenizer(path):
        raise MissingTokenizerError(
            f"no tokenizer in {path}: looked for {', '.join(TOKENIZER_MARKERS)} (a tokenizer is tokenizer.json, "
            f"or vocab.json + merges.txt, with tokenizer_config.json){hint}"
        )
    try:
        with _quiet_transformers():  # it reads config.json too and warns about the unknown model type
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except (ValueError, OSError) as err:
        if fallback is None:
            raise CheckpointError(f"cannot load the tokenizer in {path}: {err}") from None
        first = err
    try:
        return fallback.from_pretrained(str(path), local_files_only=True)
    except (ValueError, OSError) as err:
        raise CheckpointError(
            f"cannot load the tokenizer in {path}: AutoTokenizer said {first}; {fallback.__name__} said {err}"
        ) from None


def copy_tokenizer_files(source: Path, target: Path) -> list[str]:
    """Copy the tokenizer files of ``source`` (an explicit ``model.tokenizer`` directory) verbatim,
    so that a saved checkpoint carries the tokenizer it was used with."""
    if source.resolve() == target.resolve():
        return []
    copied = []
    for item in sorted(source.iterdir()):
        if item.is_file() and is_tokenizer_file(item.name):
            shutil.copyfile(item, target / item.name)
            copied.append(item.name)
    return copied


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
