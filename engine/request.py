"""What the engine is asked (`FimRequest`) and what it answers (`FimResult`). No LSP here."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StopRule:
    """Where a suggestion ends, judged on the middle's text as it grows.

    single_line: stop at the first line break, unless the line was only a comment (starts with
    `line_comment`): a comment alone says nothing, the code line after it is the suggestion.
    Otherwise stop after `max_lines` lines, or before a complete non-blank line indented less
    than `block_indent` (the end of the block the cursor is in), or at any of `stop_strings`.

    `line_deadline` (a `time.monotonic()` instant) is the latency budget of a multi-line
    suggestion: once it has passed, the suggestion ends after its last complete line, if one with
    code in it was decoded. A budget never cuts a line: what an editor shows first stays on screen
    until the user types, and half a line there is a bad suggestion, not a fast one.
    """

    single_line: bool = False
    max_lines: int = 12
    block_indent: int | None = None
    stop_strings: tuple[str, ...] = ()
    line_comment: str = ""
    line_deadline: float | None = None

    def unbudgeted(self) -> StopRule:
        """The same rule without the latency budget: for what is decoded past the first answer."""
        return dataclasses.replace(self, line_deadline=None) if self.line_deadline is not None else self

    def cut(self, text: str) -> tuple[str, str | None]:
        """(text up to the stop, why it ends there): None while it goes on, "stop" at a stop string,
        a line break of a single line, `max_lines` or the end of the block, "budget" after the last
        whole line once `line_deadline` has passed."""
        hit = len(text)
        for s in self.stop_strings:
            i = text.find(s)
            if i >= 0:
                hit = min(hit, i)
        done: str | None = None
        if hit < len(text):
            text, done = text[:hit], "stop"
        max_lines = max(1, self.max_lines)  # 0 would end a suggestion before it starts
        if self.single_line:
            start = 0
            for _ in range(max_lines):
                i = text.find("\n", start)
                if i < 0:
                    return text, done
                if not (self.line_comment and text[start:i].strip().startswith(self.line_comment)):
                    return text[:i], "stop"
                start = i + 1
            return text[:start - 1], "stop"
        lines = text.split("\n")
        # Only complete lines (followed by a newline) can end the block.
        for n, line in enumerate(lines[:-1]):
            if n > 0 and self.block_indent is not None and line.strip():
                indent = len(line) - len(line.lstrip())
                if indent < self.block_indent:
                    return "\n".join(lines[:n]), "stop"
            if n + 1 >= max_lines:
                return "\n".join(lines[: n + 1]), "stop"
        if done is None and self.line_deadline is not None and time.monotonic() >= self.line_deadline:
            whole = text[:text.rfind("\n") + 1].rstrip("\n")
            if whole.strip():
                return whole, "budget"
        return text, done


class CancelToken:
    """Set by whoever supersedes a request; the decode loop checks it between tokens.

    Code blocked elsewhere (a remote backend reading a socket) registers `on_cancel` callbacks,
    run once, in the cancelling thread, when the token is set (at once if it already is).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class FimRequest:
    """One completion: the text around the cursor and how to stop.

    `forced_middle` is what the user typed since the prompt's anchor: the model continues after it.
    The latency budget is the stop rule's `line_deadline`; after the answer, decoding goes on in the
    background so the next keystroke finds the rest cached (unless `background` is False).
    """

    doc: str
    prefix: str
    suffix: str
    forced_middle: str = ""
    extra_files: tuple[tuple[str, str], ...] = ()  # (path, text) of other files' snippets
    path: str = ""  # the current file's path as the extra files name theirs (repo-level prompts)
    repo: str = ""  # the workspace's name (Qwen/StarCoder2 <|repo_name|>)
    max_tokens: int = 64
    stop: StopRule = field(default_factory=StopRule)
    background: bool = True
    heal: bool = True  # token healing of the text before the cursor (off: the naive prompt)
    # Lines (stripped) the suggestion must not begin: the token that would start one of them is
    # passed over for the next best. How a caller asks for a second opinion after rejecting one.
    avoid: tuple[str, ...] = ()
    cancel: CancelToken = field(default_factory=CancelToken)
    # A warm-up (prefetch): prefilled in the runner's small `warm_chunk`s, so that a real request,
    # which cancels it, waits behind it only that long.
    warm: bool = False
    # A spine (a warm-up too): only the prompt's start, through `prefix`, is prefilled and kept for
    # every cursor whose prompt starts with it (engine/decoding/kvcache.py); nothing is decoded.
    spine: bool = False
    # Where, in `prefix`, a shorter window starts (0: none): the engine takes it when that costs
    # less prefill than the whole `prefix` (a cold place), the whole one when its start is cached.
    short_start: int = 0
    # A cold place's first answer: when the cheapest whole prompt would prefill more than this many
    # tokens (0: never), answer from a window of about this many around the cursor (the nearest lines
    # before and after it, no other files) and let the caller ask again with the whole prompt.
    quick_tokens: int = 0
    # ... and only when that whole prompt would prefill more than this many tokens (what the device
    # prefills while a person reads, ~2 s): a prompt ready within the read is answered whole.
    quick_above: int = 0


@dataclass
class FimResult:
    text: str  # the suggestion: what goes after the cursor
    finish: str  # "stop" (rule or stop token), "length", "budget" (the stop rule's line_deadline)
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from the cache
    prefilled_tokens: int = 0
    replayed_tokens: int = 0  # decoded tokens taken from a cached continuation, no model call
    decoded_tokens: int = 0
    draft_accepted: int = 0
    draft_proposed: int = 0
    elapsed_ms: float = 0.0
    prefill_ms: float = 0.0
    # Which window the engine took: "long" or "short" prefix, "quick" (`FimRequest.quick_tokens`), ""
    # when there was no choice.
    window: str = ""
    queued_ms: float = 0.0  # waiting behind other work before the engine started it
