"""`records`: prompt/response data for the supervised stage (``ddrl sft``, docs/objectives.md, "SFT").

Each record becomes one example whose reference completion is the response. Three layouts:

- ``messages``: chat records ``{"messages": [{"role": "user", "content": ..}, .., {"role":
  "assistant", "content": ..}]}`` (ShareGPT's ``conversations`` with ``from``/``value`` too): the
  last assistant turn is the response, every turn before it the prompt (rendered with the model's
  chat template by ``MaskedDiffusionPolicy.encode_chat``);
- ``prompt_response``: a prompt field (``prompt``, ``question``, ``instruction``, ``input``) and a
  response field (``response``, ``completion``, ``output``, ``answer``), or the ones named in
  ``prompt_field`` / ``response_field``;
- ``s1k``: s1K's fields mapped to d1's SFT format: the user turn is d1's system prompt, a blank
  line and the ``question``; the response is ``<reasoning>{thinking_trajectories[0]}</reasoning>\\n
  <answer>{attempt}</answer>``.

``auto`` picks the layout from the first record's fields. Data come from ``data_path`` (a file, a
``{split}`` pattern or a directory, as for every task) or from the Hugging Face cache
(``hf_dataset``); nothing is downloaded. When the source has a single split, a deterministic
``test_share`` of the records (by content hash, d1 holds out 1%) forms the test split.

The completion length (``sampler.max_completion_length``) cuts long responses; the prompt is
always kept whole (``train.max_prompt_length`` left-truncates it when set).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field, model_validator

from ddrl.config import ConfigError
from ddrl.tasks.base import Example, Task, TaskConfig
from ddrl.tasks.data import Record, field, load_hf_cached, read_records, read_split
from ddrl.tasks.protocol import D1_SYSTEM_PROMPT

if TYPE_CHECKING:
    from ddrl.models.base import MaskedDiffusionPolicy

Layout = Literal["auto", "messages", "prompt_response", "s1k"]
PROMPT_FIELDS = ("prompt", "question", "instruction", "input", "query")
RESPONSE_FIELDS = ("response", "completion", "output", "answer", "chosen")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordsConfig(TaskConfig):
    """Options of the `records` task."""

    model_config = ConfigDict(extra="forbid")

    name: str = "records"
    data_path: str | None = Field(None, description="JSONL/JSON/parquet/CSV file, {split} pattern or directory")
    hf_dataset: str | None = Field(None, description="a dataset in the HF cache (e.g. simplescaling/s1K)")
    hf_config: str | None = None
    cache_dir: str | None = None
    format: Layout = Field("auto", description="record layout (see the module docstring)")
    prompt_field: str | None = Field(None, description="prompt_response: the prompt's field name")
    response_field: str | None = Field(None, description="prompt_response: the response's field name")
    system_prompt: str | None = Field(None, description="a system turn put before every prompt")
    test_share: float = Field(0.01, ge=0, lt=1, description="held-out share when the source has one split")

    @model_validator(mode="after")
    def _one_source(self) -> RecordsConfig:
        if (self.data_path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one of task.data_path (a local file) and task.hf_dataset (HF cache)")
        return self


class RecordsTask(Task):
    """Supervised data as a task: no rewards, accuracy = the response reproduced exactly."""

    Config = RecordsConfig
    config: RecordsConfig

    def load(self, split: str) -> list[Example]:
        records, held_out = self._source(split)
        if held_out:
            records = [r for r in records if _is_test(r, self.config.seed, self.config.test_share) == (split == "test")]
        layout = self._layout(records)
        return [self._example(split, i, r, layout) for i, r in enumerate(records)]

    def _source(self, split: str) -> tuple[list[Record], bool]:
        """The records of ``split`` and whether they still need the ``test_share`` split."""
        cfg = self.config
        if cfg.hf_dataset is not None:
            try:
                return load_hf_cached(cfg.hf_dataset, cfg.hf_config, split, "records", cfg.cache_dir), False
            except ConfigError:
                if split == "train":
                    raise
                return load_hf_cached(cfg.hf_dataset, cfg.hf_config, "train", "records", cfg.cache_dir), True
        path = Path(str(cfg.data_path)).expanduser()
        if "{split}" not in str(cfg.data_path) and path.is_file():
            return read_records(path, "records"), True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return read_split(str(cfg.data_path), split, "records"), False
            except ConfigError:
                if split == "train" or not path.is_dir():
                    raise
                return read_split(str(cfg.data_path), "train", "records"), True

    def _layout(self, records: list[Record]) -> str:
        if self.config.format != "auto":
            return self.config.format
        if not records:
            return "prompt_response"
        keys = {str(k).lower() for k in records[0]}
        if "messages" in keys or "conversations" in keys:
            return "messages"
        if {"thinking_trajectories", "attempt"} <= keys:
            return "s1k"
        return "prompt_response"

    def _example(self, split: str, i: int, record: Record, layout: str) -> Example:
        cfg = self.config
        system = cfg.system_prompt
        if layout == "messages":
            turns = _chat_turns(record)
            last = max((k for k, t in enumerate(turns) if t["role"] == "assistant"), default=None)
            if last is None:
                raise ConfigError(f"records: record {i} of {split!r} has no assistant turn to learn")
            prompt_turns, response = turns[:last], turns[last]["content"]
        elif layout == "s1k":
            thinking = field(record, "thinking_trajectories", what="records (s1k)")
            if isinstance(thinking, (list, tuple)):
                if not thinking:
                    raise ConfigError(f"records: record {i} of {split!r} has empty thinking_trajectories")
                thinking = thinking[0]
            attempt = field(record, "attempt", what="records (s1k)")
            question = f"{D1_SYSTEM_PROMPT}\n\n{field(record, 'question', what='records (s1k)')}"
            prompt_turns = [{"role": "user", "content": question}]
            response = f"<reasoning>{thinking}</reasoning>\n<answer>{attempt}</answer>"
        else:
            prompt = field(record, *((cfg.prompt_field,) if cfg.prompt_field else PROMPT_FIELDS), what="records")
            response = field(record, *((cfg.response_field,) if cfg.response_field else RESPONSE_FIELDS), what="records")
            prompt_turns = [{"role": "user", "content": str(prompt)}]
        if system is not None and not any(t["role"] == "system" for t in prompt_turns):
            prompt_turns = [{"role": "system", "content": system}, *prompt_turns]
        text = "\n".join(t["content"] for t in prompt_turns)
        return Example(f"records-{split}-{i}", text, str(response), {"messages": prompt_turns})

    def format_prompt(self, example: Example) -> str:
        return example.question

    def encode(self, example: Example, policy: MaskedDiffusionPolicy) -> list[int]:
        return policy.encode_chat(example.columns["messages"])

    def reference_completion(self, example: Example) -> str | None:
        return example.answer

    def score(self, example: Example, completion: str) -> dict[str, float]:
        return {"accuracy": float(completion.strip() == str(example.answer).strip())}


def _chat_turns(record: Record) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` from OpenAI-style ``messages`` or ShareGPT ``conversations``."""
    turns = field(record, "messages", "conversations", what="records (messages)")
    if isinstance(turns, str):  # a CSV cell or a JSON-encoded column
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise ConfigError("records: a messages field is a string that is not JSON") from None
    out = []
    for turn in turns:
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role is None or content is None:
            raise ConfigError(f"records: a chat turn needs role/content (or from/value); got fields {sorted(turn)}")
        if str(role) not in SHAREGPT_ROLES:
            raise ConfigError(f"records: unknown chat role {role!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        out.append({"role": SHAREGPT_ROLES[str(role)], "content": str(content)})
    return out


def _is_test(record: Record, seed: int, share: float) -> bool:
    """Deterministic hold-out by content hash: the same record always lands on the same side."""
    digest = hashlib.sha256(f"{seed}|{json.dumps(record, sort_keys=True, default=str)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share
