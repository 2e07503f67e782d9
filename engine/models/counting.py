"""Token counts for sizing the context windows, computed once per window where the text is.

`TokenCounter.starts(text)` gives the character offset where each token of `text` begins (so
`len(starts)` is the count, and the tokens from any offset on are a bisect away): the server
tokenizes a window's region once and reads every candidate cut from that, instead of counting
each candidate again. A backend hands out the counter of its model's vocabulary (`Backend.counter`):
exact for a `tokenizers` tokenizer (the embedded GGUF's, a Hugging Face fast tokenizer, a daemon's
shared one), piece by piece for others (mistral-common's SentencePiece), estimated from the length
for remote APIs (`CHARS_PER_TOKEN`). Counts size budgets; the prompt itself is encoded by the engine.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Protocol

CHARS_PER_TOKEN = 3.5  # code in the vocabularies of the supported families, on average


class TokenCounter(Protocol):
    def starts(self, text: str) -> list[int]:
        """Character offsets in `text` where its tokens begin, in order."""


class ApproxCounter:
    """For a backend whose tokenizer is unknown here (a remote API): `chars_per_token` a token."""

    def __init__(self, chars_per_token: float = CHARS_PER_TOKEN) -> None:
        self.chars_per_token = chars_per_token

    def starts(self, text: str) -> list[int]:
        step = self.chars_per_token
        return [int(i * step) for i in range(math.ceil(len(text) / step))]


class FastCounter:
    """A `tokenizers.Tokenizer`: its own offsets (thread-safe: `lock` is the one its owner flips
    modes under, if any)."""

    def __init__(self, tokenizer: Any, lock: threading.Lock | None = None) -> None:
        self.tokenizer = tokenizer
        self.lock = lock or threading.Lock()

    def starts(self, text: str) -> list[int]:
        if not text:
            return []
        with self.lock:
            offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
        return [start for start, _ in offsets]


class PieceCounter:
    """Any tokenizer with `encode` and exact single-piece `decode`: starts from the pieces' lengths."""

    def __init__(self, encode: Any, piece: Any) -> None:
        self.encode, self.piece = encode, piece

    def starts(self, text: str) -> list[int]:
        out, at = [], 0
        for i, token in enumerate(self.encode(text)):
            out.append(min(at, len(text)))
            piece = self.piece(token)
            at += len(piece) - (1 if i == 0 and piece.startswith(" ") and not text.startswith(" ") else 0)
        return out


def counter_for(tokenizer: Any, encode: Any = None, piece: Any = None) -> TokenCounter:
    """The counter for a loaded tokenizer: its `tokenizers` backend when it has one, else pieces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode"):
        return FastCounter(backend, getattr(tokenizer, "lock", None))
    return PieceCounter(encode or (lambda t: tokenizer.encode(t, add_special_tokens=False)),
                        piece or (lambda i: tokenizer.decode([i])))


def count(counter: TokenCounter, text: str) -> int:
    return len(counter.starts(text))
