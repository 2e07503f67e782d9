"""Keep the prompt still while the user types: an anchored edit per document.

The prompt is cut where the current edit began (the anchor); what was typed since then goes to
the engine as `forced_middle`. As long as the text before the anchor and after the cursor is
unchanged, every keystroke produces the same prompt plus a growing middle, so the engine's KV
cache (prefix *and* suffix) survives — essential for prefix-suffix-middle models like Qwen.
The anchor compares document text (any line ending); the middle goes to the model in LF form, as
the context windows do.
"""

from __future__ import annotations

from dataclasses import dataclass

from codestral_ls.server.context import Context

MAX_TYPED = 400  # past this many typed characters a fresh anchor is cheaper than a long middle
MAX_DOCS = 64  # anchors kept, most recently re-anchored documents first (a client may never close)


@dataclass
class Anchor:
    offset: int  # where the edit began
    ctx: Context  # context computed at the anchor
    raw_prefix: str  # document text [ctx.prefix_start, offset)
    raw_suffix: str  # document text after the anchor that the suffix window covered (to ctx.suffix_end)


@dataclass(frozen=True)
class Placement:
    """The prompt parts for one request."""

    ctx: Context
    forced_middle: str
    anchored: bool  # True when the prompt reused the previous anchor


class Anchors:
    def __init__(self) -> None:
        self._by_doc: dict[str, Anchor] = {}

    def lookup(self, uri: str, text: str, offset: int) -> Placement | None:
        """The document's anchored prompt for `offset`, if the text around the anchor is unchanged."""
        a = self._by_doc.get(uri)
        if a is None or not a.offset <= offset <= a.offset + MAX_TYPED:
            return None
        same_prefix = text[a.ctx.prefix_start:a.offset] == a.raw_prefix
        same_suffix = text[offset:offset + len(a.raw_suffix)] == a.raw_suffix
        if not (same_prefix and same_suffix):
            return None
        return Placement(a.ctx, text[a.offset:offset].replace("\r\n", "\n"), anchored=True)

    def remember(self, uri: str, text: str, offset: int, ctx: Context) -> Placement:
        """Anchor the document here, with the context computed at `offset`."""
        self._by_doc.pop(uri, None)
        self._by_doc[uri] = Anchor(offset, ctx, text[ctx.prefix_start:offset], text[offset:ctx.suffix_end])
        while len(self._by_doc) > MAX_DOCS:
            del self._by_doc[next(iter(self._by_doc))]
        return Placement(ctx, "", anchored=False)

    def forget(self, uri: str) -> None:
        self._by_doc.pop(uri, None)

    def __len__(self) -> int:
        return len(self._by_doc)
