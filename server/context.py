"""What the model sees around the cursor: the prefix and suffix windows of the prompt.

Windows are cut on syntax boundaries (starts of top-level nodes, from the `Cursor`'s one parse)
inside a token budget; when a top-level node alone is too big, on lines in coarse steps. Either way
the window start only moves when the cursor crosses a boundary, so consecutive keystrokes share the
prompt's beginning and the engine's KV cache. Only the cursor's region is read, never a whole
multi-megabyte file. The model sees LF line ends whatever the document uses: it was trained on
LF code, and its answer goes back to the document's ending at the end of the path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from codestral_ls.server.cursor import Cursor

LINE_STEP = 32  # fallback window starts snap to multiples of this many lines
MAX_LINE_CHARS = 2000  # a longer line is cut: context is never a 100k-character line
TAIL_STEP = 64  # the window edge inside a too-long line moves in steps of this many characters


@dataclass(frozen=True)
class Context:
    prefix: str  # window text before the cursor (LF line ends)
    suffix: str  # window text after the cursor (LF line ends)
    prefix_start: int  # offset in the document where `prefix` starts
    suffix_end: int  # offset in the document where `suffix` ends


def build_context(cursor: Cursor, count_tokens: Callable[[str], int], prefix_tokens: int,
                  suffix_tokens: int) -> Context:
    text, offset = cursor.text, cursor.offset
    region_start, region_end = cursor.region
    prefix_start = _prefix_start(text, region_start, cursor.line_start, offset, cursor.syntax.boundaries,
                                 count_tokens, prefix_tokens)
    prefix = _clip_long_lines(text[prefix_start:offset].replace("\r\n", "\n"), keep_end=True)
    suffix_end = _suffix_end(text, offset, region_end, count_tokens, suffix_tokens)
    suffix = _clip_long_lines(text[offset:suffix_end].replace("\r\n", "\n"), keep_end=False)
    return Context(prefix=prefix, suffix=suffix, prefix_start=prefix_start, suffix_end=suffix_end)


def _prefix_start(text: str, region_start: int, line_start: int, offset: int, boundaries: tuple[int, ...],
                  count_tokens: Callable[[str], int], budget: int) -> int:
    """Earliest stable start whose window fits the budget."""
    candidates = sorted({b for b in boundaries if b <= line_start})
    # Line-step fallbacks, counted from the document start so they do not move with the cursor.
    line_no = text.count("\n", 0, region_start)
    pos = region_start
    step_starts = []
    while pos <= line_start:
        if line_no % LINE_STEP == 0:
            step_starts.append(pos)
        nxt = text.find("\n", pos, line_start)
        if nxt < 0:
            break
        pos = nxt + 1
        line_no += 1
    candidates = sorted(set(candidates) | set(step_starts) | {line_start})
    # Cheap first cut from the char count, then exact counts: a binary search, as a later start
    # never has more tokens (a few tokenizations, not one per candidate line).
    near = [start for start in candidates if offset - start <= budget * 6]
    lo, hi = 0, len(near)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[near[mid]:offset]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo < len(near):
        return near[lo]
    # Even the current line is too long: keep the tail of it that fits.
    return _fit_tail(text, line_start, offset, count_tokens, budget)


def _suffix_end(text: str, offset: int, region_end: int, count_tokens: Callable[[str], int], budget: int) -> int:
    if budget <= 0:
        return offset
    end = offset
    pos = offset
    limit = min(region_end, offset + budget * 6)
    while pos < limit:
        nxt = text.find("\n", pos, limit)
        nxt = limit if nxt < 0 else nxt + 1
        if count_tokens(text[offset:nxt]) > budget:
            break
        end = pos = nxt
    if end > offset:
        return end
    line_end = text.find("\n", offset)
    return _fit_head(text, offset, len(text) if line_end < 0 else line_end, count_tokens, budget)


def _fit_tail(text: str, lo: int, offset: int, count_tokens: Callable[[str], int], budget: int) -> int:
    """Start of the longest tail of text[lo:offset] within the token budget (a line of digits or
    CJK is about one token per character, or more), snapped to TAIL_STEP so it stays put while
    the user types."""
    width = budget * 3
    for _ in range(8):
        start = max(lo, offset - width)
        snapped = -(-start // TAIL_STEP) * TAIL_STEP
        if start > lo and snapped < offset:
            start = snapped
        tokens = count_tokens(text[start:offset])
        if tokens <= budget:
            return start
        width = (offset - start) * budget // tokens  # narrower each round: tokens > budget
    return offset


def _fit_head(text: str, offset: int, hi: int, count_tokens: Callable[[str], int], budget: int) -> int:
    """End of the longest head of text[offset:hi] within the token budget (see `_fit_tail`)."""
    width = budget * 3
    for _ in range(8):
        end = min(hi, offset + width)
        snapped = end // TAIL_STEP * TAIL_STEP
        if end < hi and snapped > offset:
            end = snapped
        tokens = count_tokens(text[offset:end])
        if tokens <= budget:
            return end
        width = (end - offset) * budget // tokens
    return offset


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
