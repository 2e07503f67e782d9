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

import itertools
from bisect import bisect_left
from dataclasses import dataclass

from codestral_ls.engine.models.counting import CHARS_PER_TOKEN, TokenCounter
from codestral_ls.server.cursor import Cursor

LINE_STEP = 32  # fallback window starts snap to multiples of this many lines
MAX_LINE_CHARS = 2000  # a longer line is cut: context is never a 100k-character line
TAIL_STEP = 64  # the window edge inside a too-long line moves in steps of this many characters
CHARS_PER_TOKEN_MAX = 6  # no window of N tokens is longer than 6N characters (code tokens are shorter)
GRID_SHARE = 0.8  # anchors are this share of the room a spine leaves above the cold window apart
SPINE_MARGIN = 16  # tokens a spine reaches past its last cursor's line start (the rest of that line)


@dataclass(frozen=True)
class Context:
    prefix: str  # window text before the cursor (LF line ends)
    suffix: str  # window text after the cursor (LF line ends)
    prefix_start: int  # offset in the document where `prefix` starts
    suffix_end: int  # offset in the document where `suffix` ends
    # Where, in `prefix`, the window sized to a cold prompt starts when `prefix` is the longer window
    # from a spine anchor (0: `prefix` is that window). The engine takes the cheaper of the two.
    short_start: int = 0


@dataclass(frozen=True)
class Spines:
    """How the open file is cut into spines (the starts every prompt in a stretch of it shares,
    prefilled while the user reads): anchors every `grid` characters; a prompt's prefix starts at
    the latest anchor at least `min_tokens` before the cursor and holds at most `max_tokens`."""

    grid: int  # characters between anchors
    min_tokens: int  # the cold window's prefix budget: a spine never gives a shorter prefix
    max_tokens: int  # what an engine sequence holds of a prefix, after the suffix and the suggestion

    @classmethod
    def sized(cls, prefix_tokens: int, room: int | None) -> Spines | None:
        """Spines for cold prefixes of `prefix_tokens` where a prefix may hold `room` tokens (None:
        no spines, also where the room is too small to make them worth it)."""
        if room is None or room - prefix_tokens < prefix_tokens // 2:
            return None
        return cls(int((room - prefix_tokens) * GRID_SHARE * CHARS_PER_TOKEN), prefix_tokens, room)


def build_context(cursor: Cursor, counter: TokenCounter, prefix_tokens: int, suffix_tokens: int,
                  spines: Spines | None = None) -> Context:
    text, offset = cursor.text, cursor.offset
    region_start, region_end = cursor.region
    prefix_start = _prefix_start(cursor, region_start, counter, prefix_tokens)
    suffix_end = _suffix_end(text, offset, region_end, counter, suffix_tokens)
    suffix = _clip_long_lines(text[offset:suffix_end].replace("\r\n", "\n"), keep_end=False)
    start = long_start(text, cursor.line_start, offset, counter, spines) if spines else None
    if start is None or start >= prefix_start:
        prefix = _clip_long_lines(text[prefix_start:offset].replace("\r\n", "\n"), keep_end=True)
        return Context(prefix=prefix, suffix=suffix, prefix_start=prefix_start, suffix_end=suffix_end)
    head = _clip_long_lines(text[start:prefix_start].replace("\r\n", "\n"), keep_end=False)
    prefix = _clip_long_lines(head + text[prefix_start:offset].replace("\r\n", "\n"), keep_end=True)
    return Context(prefix=prefix, suffix=suffix, prefix_start=start, suffix_end=suffix_end,
                   short_start=len(prefix) - len(text[prefix_start:offset].replace("\r\n", "\n")))


# -- spines ---------------------------------------------------------------------------------------


def anchor(text: str, k: int, grid: int) -> int | None:
    """The k-th spine anchor: the first line starting with code at column 0 within a quarter of the
    grid after k * grid characters, else the first non-blank line there (None past the end). Counted
    from the document start in characters, so an edit moves an anchor below it only when it shifts a
    grid line across such a line start."""
    g = k * grid
    if g == 0:
        return 0
    if g >= len(text):
        return None
    pos = g if text[g - 1] == "\n" else text.find("\n", g) + 1
    first = None
    while 0 < pos < len(text) and pos <= g + grid // 4:
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        if text[pos] not in " \t\r\n":
            return pos
        if first is None and text[pos:end].strip():
            first = pos
        pos = end + 1
    return first if first is not None else (pos if 0 < pos < len(text) else None)


def long_start(text: str, line_start: int, offset: int, counter: TokenCounter, spines: Spines) -> int | None:
    """Where the spine-aligned prefix of a cursor starts: the latest anchor at least `min_tokens`
    before it (the document start when none is), or None when that prefix would be too long."""
    k = line_start // spines.grid
    anchors = []
    while k >= 0:
        a = anchor(text, k, spines.grid)
        if a is not None and a <= line_start:
            anchors.append(a)
            if offset - a > spines.max_tokens * CHARS_PER_TOKEN_MAX:
                break
        k -= 1
    if not anchors:
        return None
    base = anchors[-1]
    starts = counter.starts(text[base:offset])
    for a in anchors:  # latest first
        n = len(starts) - bisect_left(starts, a - base)
        if n >= spines.min_tokens or a == 0:
            return a if n <= spines.max_tokens else None
    return None


def spine_plan(text: str, offset: int, counter: TokenCounter, spines: Spines, count: int) -> list[tuple[int, int]]:
    """The spines around the cursor, the one its prompt starts with first, then below and above it:
    (start, end) offsets, each reaching as far as the cursors that start at it."""
    line_start = text.rfind("\n", 0, offset) + 1
    here = long_start(text, line_start, offset, counter, spines)
    k0 = (here if here is not None else line_start) // spines.grid
    # People read and write downwards: two spines below for each one above.
    below, above = (k0 + i for i in itertools.count(1)), (k0 - i for i in itertools.count(1))
    order = [k0]
    for _ in range(count * 2):
        order += [next(below), next(below), next(above)]
    out: list[tuple[int, int]] = []
    for k in order:
        if len(out) >= count:
            break
        a = anchor(text, k, spines.grid) if k >= 0 else None
        if a is None or any(a == s for s, _ in out):
            continue
        out.append((a, _spine_end(text, a, anchor(text, k + 1, spines.grid), counter, spines)))
    return out


def spine_text(text: str, start: int, end: int) -> str:
    """A spine's text as prompts hold it: LF line ends, long lines cut as in a prefix window."""
    return _clip_long_lines(text[start:end].replace("\r\n", "\n"), keep_end=True)


def _spine_end(text: str, a: int, after: int | None, counter: TokenCounter, spines: Spines) -> int:
    """How far the cursors whose prompt starts at `a` reach (until the next anchor, `after`, has
    `min_tokens` before them, and never past `max_tokens`), to the end of that line."""
    limit = min(len(text), a + spines.max_tokens * CHARS_PER_TOKEN_MAX)
    starts = counter.starts(text[a:limit])
    last = spines.max_tokens
    if after is not None and after < limit:
        last = min(last, bisect_left(starts, after - a) + spines.min_tokens + SPINE_MARGIN)
    if len(starts) <= last:
        return limit
    line_end = text.find("\n", a + starts[last])
    return limit if line_end < 0 else min(line_end + 1, limit)


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


__all__ = ["Context", "Spines", "anchor", "build_context", "long_start", "spine_plan", "spine_text", "stable_starts"]
