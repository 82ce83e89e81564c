"""Decoding helpers for in-process backends: incremental detokenising and stop strings in streamed text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IncrementalDetokenizer", "StopChecker"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never split a UTF-8 character.

    Byte-level tokenizers may need several tokens for one character; while the decoded tail ends with
    U+FFFD the text is held back. Only a short window of ids is re-decoded per step (the ids since the last
    clean cut, plus the previous piece for context), so the cost per token stays constant.

    Args:
        tokenizer: A transformers tokenizer (anything with ``decode(ids, skip_special_tokens=...)``).
        skip_special_tokens: Leave special tokens out of the text.

    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""
        """All text released so far."""

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=self._skip))

    def add(self, token_id: int) -> str:
        """Append one token and return the newly complete text (possibly empty)."""
        self._ids.append(int(token_id))
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(_REPLACEMENT):
            delta = full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Release whatever is held back (at the end of generation), replacement characters included."""
        if self._read_offset == len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        delta = full[len(prefix) :] if full.startswith(prefix) else full
        self._prefix_offset = self._read_offset = len(self._ids)
        self.text += delta
        return delta


class StopChecker:
    """Finds stop strings in streamed text and says how much text is safe to emit.

    Text that could be the beginning of a stop string is held back until it is clear it is not.

    Args:
        stops: The stop strings (empty strings are ignored).

    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._searched = 0

    def find(self, text: str) -> int | None:
        """Index where the earliest stop string starts in ``text``, or None (searches only new text)."""
        if not self.stops:
            return None
        start = max(0, self._searched - self._longest + 1)
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        self._searched = len(text)
        return min(hits) if hits else None

    def safe_length(self, text: str) -> int:
        """Length of the prefix of ``text`` that cannot become part of a stop string."""
        for keep in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-keep:]
            if any(s.startswith(tail) for s in self.stops):
                return len(text) - keep
        return len(text)
