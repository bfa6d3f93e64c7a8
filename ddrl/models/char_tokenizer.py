"""A character-level tokenizer for the tiny model: one token per character plus five specials."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Sequence

SPECIAL_TOKENS = ("<pad>", "<mask>", "<bos>", "<eos>", "<unk>")
# Printable ASCII without the characters that never occur in the toy tasks' text.
DEFAULT_CHARSET = string.digits + string.ascii_letters + " +-*/()=<>.,:;?!'\"%#_[]{}^|&@$\n"
TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """Ids 0..4 are ``<pad> <mask> <bos> <eos> <unk>``; id 5+i is ``charset[i]``."""

    def __init__(self, charset: str = DEFAULT_CHARSET) -> None:
        if len(set(charset)) != len(charset):
            dup = sorted({c for c in charset if charset.count(c) > 1})
            raise ValueError(f"charset has repeated characters: {dup!r}")
        if not charset:
            raise ValueError("charset must not be empty")
        self.charset = charset
        self._id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(charset)}
        self.pad_token_id, self.mask_token_id, self.bos_token_id = 0, 1, 2
        self.eos_token_id, self.unk_token_id = 3, 4

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.charset)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self._id.get(c, self.unk_token_id) for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out = []
        n_special = len(SPECIAL_TOKENS)
        for i in ids:
            i = int(i)
            if i < n_special:
                if not skip_special_tokens:
                    out.append(SPECIAL_TOKENS[i])
            elif i < self.vocab_size:
                out.append(self.charset[i - n_special])
            else:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return "".join(out)

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of ``text`` this tokenizer would map to ``<unk>``."""
        return sorted({c for c in text if c not in self._id})

    def save(self, directory: str | Path) -> None:
        payload = {"type": "ddrl-char", "special_tokens": list(SPECIAL_TOKENS), "charset": self.charset}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a tiny-model directory needs {TOKENIZER_FILE}")
        payload = json.loads(path.read_text())
        if payload.get("type") != "ddrl-char" or list(payload.get("special_tokens", [])) != list(
            SPECIAL_TOKENS
        ):
            raise ValueError(f"{path} is not a ddrl character tokenizer")
        return cls(payload["charset"])
