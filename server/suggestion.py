"""What a request gets: the document it was asked in, the suggestion (and what follows it), and an
engine answer as it would be shown (`Fit`)."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

from codestral_ls.engine.request import FimResult

FINISHED = ("stop", "budget")  # an answer that ended where it meant to (not cut at max_tokens)


@dataclass(frozen=True)
class Document:
    uri: str
    text: str
    language_id: str = ""


@dataclass
class Suggestion:
    id: str
    text: str  # inserted at the cursor
    line: int
    offset: int  # cursor offset in the document (characters)
    source: str  # "engine" or "typed-through"
    latency_ms: float
    result: FimResult | None = None
    replace_after: int = 0  # characters after the cursor that `text` replaces (auto-closed brackets)
    # Other distinct finished suggestions here, best first (the `candidates` option): clients cycle.
    alternatives: list[Suggestion] = dataclasses.field(default_factory=list)
    # The rest of a budget-cut block, still decoding: resolves to the longer suggestion (None: nothing more).
    growing: asyncio.Task[Suggestion | None] | None = None


@dataclass(frozen=True)
class Fit:
    """An engine answer as it would be shown: post-processed, the characters after the cursor it
    replaces, and why it cannot fit the code after it (None: it fits, or it was cut short)."""

    text: str
    replace: int
    misfit: str | None


__all__ = ["FINISHED", "Document", "Fit", "Suggestion"]
