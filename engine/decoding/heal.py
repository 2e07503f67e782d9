"""Token healing: the text of every vocabulary entry, indexed so a constrained step is cheap.

When the prompt's last token is taken back (see `fim.FimEncoder.build`), the first decoded tokens
must spell that text again: a token is allowed while the owed text ("rest") starts with it, or it
starts with the rest and carries on past it (but not by more whitespace). Both are needed:
indentation "    " before a word is tokenized "   " + " return", so the owed four spaces are often
paid by a shorter token; which shorter ones, `consistent` says. Every string is the token's exact
text: a SentencePiece "▁return" is " return" (its tokenizer's own decoder would drop the space).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from codestral_ls.engine.models.tokenizer import piece_decoder


@dataclass
class HealIndex:
    strings: list[str]
    by_first_char: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, tokenizer: Any, vocab_size: int) -> HealIndex:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        n = min(vocab_size, len(tokenizer))
        pieces = piece_decoder(tokenizer)  # SentencePiece: a lone piece keeps its leading space
        strings = ([pieces([i]) for i in range(n)] if pieces is not None else
                   tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False))
        strings += [""] * (vocab_size - n)
        index: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(strings):
            if s and i not in special and "\ufffd" not in s:
                index[s[0]].append(i)
            elif i in special:
                strings[i] = ""
        return cls(strings=strings, by_first_char=dict(index))

    def allowed(self, rest: str) -> list[int]:
        """Token ids consistent with owing `rest` (non-empty)."""
        return [i for i in self.by_first_char.get(rest[0], ()) if self.consistent(i, rest)]

    def consistent(self, token: int, rest: str) -> bool:
        if not rest:
            return True
        s = self.strings[token] if token < len(self.strings) else ""
        if not s:
            return False
        if rest.startswith(s):
            if s == rest or not rest.isspace():
                return True
            # Owed whitespace (an indent) is paid the way a BPE tokenizer splits it before a word:
            # the newlines, then all spaces but one, then " word". Any other split strands the
            # model mid-indent (it took 7 of 12 spaces meaning " if" next, which no longer fits).
            left = rest[len(s):]
            return left == " " or (s[-1] in "\r\n" and "\n" not in left)
        # Carrying on past the owed text must not lengthen a run of whitespace: after an
        # auto-indent, a longer space token would silently re-indent the line.
        return s.startswith(rest) and not (rest[-1].isspace() and s[len(rest)].isspace())

    def advance(self, rest: str, token: int) -> str:
        """What is still owed after `token` was chosen."""
        s = self.strings[token]
        return rest[len(s):] if rest and rest.startswith(s) else ""
