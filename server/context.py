"""What the model sees around the cursor: the prefix and suffix windows of the prompt.

Windows are cut on syntax boundaries (starts of top-level nodes, from the `Cursor`'s one parse)
inside a token budget; when a top-level node alone is too big, on lines in coarse steps. Either way
the window start only moves when the cursor crosses a boundary, so consecutive keystrokes share the
prompt's beginning and the engine's KV cache. Only the cursor's region is read, never a whole
multi-megabyte file, and each window's text is tokenized once (`TokenCounter.starts`): every
candidate cut is then a bisect. The model sees LF line ends whatever the document uses: it was
trained on LF code, and its answer goes back to the document's ending at the end of the path.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from codestral_ls.engine.models.counting import TokenCounter
from codestral_ls.server.cursor import Cursor

LINE_STEP = 32  # fallback window starts snap to multiples of this many lines
MAX_LINE_CHARS = 2000  # a longer line is cut: context is never a 100k-character line
TAIL_STEP = 64  # the window edge inside a too-long line moves in steps of this many characters
CHARS_PER_TOKEN_MAX = 6  # no window of N tokens is longer than 6N characters (code tokens are shorter)


@dataclass(frozen=True)
class Context:
    prefix: str  # window text before the cursor (LF line ends)
    suffix: str  # window text after the cursor (LF line ends)
    prefix_start: int  # offset in the document where `prefix` starts
    suffix_end: int  # offset in the document where `suffix` ends


def build_context(cursor: Cursor, counter: TokenCounter, prefix_tokens: int, suffix_tokens: int) -> Context:
    text, offset = cursor.text, cursor.offset
    region_start, region_end = cursor.region
    prefix_start = _prefix_start(cursor, region_start, counter, prefix_tokens)
    prefix = _clip_long_lines(text[prefix_start:offset].replace("\r\n", "\n"), keep_end=True)
    suffix_end = _suffix_end(text, offset, region_end, counter, suffix_tokens)
    suffix = _clip_long_lines(text[offset:suffix_end].replace("\r\n", "\n"), keep_end=False)
    return Context(prefix=prefix, suffix=suffix, prefix_start=prefix_start, suffix_end=suffix_end)


def stable_starts(text: str, region_start: int, line_start: int, boundaries: tuple[int, ...]) -> list[int]:
    """Where a prefix window may start: top-level syntax boundaries, every `LINE_STEP`th line counted
    from the document start (so they do not move with the cursor), and the cursor's line."""
    starts = {b for b in boundaries if b <= line_start}
    line_no = text.count("\n", 0, region_start)
    pos = region_start
    while pos <= line_start:
        if line_no % LINE_STEP == 0:
            starts.add(pos)
        nxt = text.find("\n", pos, line_start)
        if nxt < 0:
            break
        pos = nxt + 1
        line_no += 1
    starts.add(line_start)
    return sorted(starts)


def _prefix_start(c: Cursor, region_start: int, counter: TokenCounter, budget: int) -> int:
    """Earliest stable start whose window fits the budget."""
    text, offset = c.text, c.offset
    near = [s for s in stable_starts(text, region_start, c.line_start, c.syntax.boundaries)
            if offset - s <= budget * CHARS_PER_TOKEN_MAX]
    if near:
        # One tokenization of the widest window; a later start never holds more tokens.
        base = near[0]
        starts = counter.starts(text[base:offset])
        for s in near:
            if len(starts) - bisect_left(starts, s - base) <= budget:
                return s
    # Even the current line is too long: keep the tail of it that fits.
    return _fit_tail(text, c.line_start, offset, counter, budget)


def _suffix_end(text: str, offset: int, region_end: int, counter: TokenCounter, budget: int) -> int:
    if budget <= 0:
        return offset
    limit = min(region_end, offset + budget * CHARS_PER_TOKEN_MAX)
    starts = counter.starts(text[offset:limit])
    # The window ends at the last line end within the budget (a token starting at or past the cut
    # does not count).
    end, pos = offset, offset
    while pos < limit:
        nxt = text.find("\n", pos, limit)
        nxt = limit if nxt < 0 else nxt + 1
        if bisect_left(starts, nxt - offset) > budget:
            break
        end = pos = nxt
    if end > offset:
        return end
    line_end = text.find("\n", offset)
    return _fit_head(text, offset, len(text) if line_end < 0 else line_end, counter, budget)


def _fit_tail(text: str, lo: int, offset: int, counter: TokenCounter, budget: int) -> int:
    """Start of the longest tail of text[lo:offset] within the token budget (a line of digits or
    CJK is about one token per character), snapped up to TAIL_STEP so it stays put while the user
    types."""
    base = max(lo, offset - budget * CHARS_PER_TOKEN_MAX)
    starts = counter.starts(text[base:offset])
    if len(starts) <= budget:
        return base
    start = base + starts[len(starts) - budget]
    snapped = -(-start // TAIL_STEP) * TAIL_STEP
    return snapped if snapped < offset else start


def _fit_head(text: str, offset: int, hi: int, counter: TokenCounter, budget: int) -> int:
    """End of the longest head of text[offset:hi] within the token budget (see `_fit_tail`)."""
    end = min(hi, offset + budget * CHARS_PER_TOKEN_MAX)
    starts = counter.starts(text[offset:end])
    if len(starts) <= budget:
        return end
    cut = offset + starts[budget]
    snapped = cut // TAIL_STEP * TAIL_STEP
    return snapped if snapped > offset else cut


def _clip_long_lines(text: str, keep_end: bool) -> str:
    if len(text) <= MAX_LINE_CHARS or all(len(line) <= MAX_LINE_CHARS for line in text.split("\n")):
        return text
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        touching_cursor = (i == len(lines) - 1) if keep_end else (i == 0)
        if len(line) > MAX_LINE_CHARS:
            line = (line[-MAX_LINE_CHARS:] if keep_end else line[:MAX_LINE_CHARS]) if touching_cursor else ""
        out.append(line)
    return "\n".join(out)


__all__ = ["Context", "bisect_right", "build_context", "stable_starts"]
