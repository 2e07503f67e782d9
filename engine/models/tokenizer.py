"""Mistral's own tokenizers (mistral-common) behind the engine's tokenizer interface.

Mistral models are tokenized the way Mistral's inference code and vLLM's `tokenizer_mode=mistral`
do: with `mistral-common` reading the `tokenizer.model.v*` SentencePiece file that ships with the
weights, never with a converted Hugging Face tokenizer. `MistralCommonTokenizer` gives it the few
methods the engine calls on a tokenizer (`fim.FimEncoder`, `heal.HealIndex`, `draft`):
`encode`, `decode`, `batch_decode`, `get_vocab`, `convert_tokens_to_ids`, the special ids, `len()`.

Rules it keeps:
- `encode` is SentencePiece's own: it prepends the dummy "▁" to a non-empty text, and text that
  spells a control token ("[PREFIX]") stays text. `encode_infilling` is the suffix encoding of
  mistral-common's `encode_fim` (the "☺" sentinel cut off), so prompts match it token for token.
- `decode` is exact: the concatenated bytes of the pieces ("▁" is a space, `<0x0A>` is byte 0x0A).
  SentencePiece's own decoder drops the leading space of a sequence's first piece ("▁return" decodes
  to "return"), which would make a healed piece's text and a decoded suggestion wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from codestral_ls.engine.errors import ModelLoadError

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# mistral-common's sentinel for encoding text with no dummy prefix (`_encode_infilling`).
INFILL_SENTINEL = "☺"
CODESTRAL_V3 = "mistral_instruct_tokenizer_240323.model.v3"  # Codestral-22B-v0.1's, shipped by mistral-common


def piece_bytes(piece: str) -> bytes:
    """A SentencePiece piece's bytes: "▁" is a space, `<0x0A>` is the byte 0x0A."""
    m = _BYTE_PIECE.fullmatch(piece)
    return bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode("utf-8")


def piece_decoder(tokenizer: Any) -> Callable[[list[int]], str] | None:
    """Exact decoding for a Hugging Face SentencePiece-style tokenizer (CodeLlama, a converted Mistral
    one): its decoder strips the first piece's leading space, so decode the pieces ourselves. None for
    a tokenizer that needs no help (byte-level BPE; mistral-common's, which decodes exactly itself)."""
    if isinstance(tokenizer, MistralCommonTokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return None
    try:
        ids = tokenizer.encode("a", add_special_tokens=False)
        first = tokenizer.convert_ids_to_tokens(ids[:1])
    except Exception:  # an exotic tokenizer: leave its own decoder in charge
        return None
    if not first or not isinstance(first[0], str) or not first[0].startswith("▁"):
        return None

    def decode(ids: list[int]) -> str:
        pieces = tokenizer.convert_ids_to_tokens(list(ids))
        return b"".join(piece_bytes(p) for p in pieces if p is not None).decode("utf-8", errors="replace")

    return decode


def find_mistral_tokenizer(folder: Path) -> Path | None:
    """The mistral-common SentencePiece file in `folder` (`tokenizer.model.v3` ...), newest version first."""
    if not folder.is_dir():
        return None
    from mistral_common.tokens.tokenizers.sentencepiece import is_sentencepiece

    found = sorted((p for p in folder.glob("tokenizer.model.v*") if is_sentencepiece(p)), reverse=True)
    return found[0] if found else None


@dataclass
class MistralCommonTokenizer:
    """A mistral-common SentencePiece tokenizer with exact piece decoding; see the module docstring."""

    path: Path
    instruct: Any = field(repr=False)  # mistral_common InstructTokenizer (has encode_fim)

    @classmethod
    def from_file(cls, path: Path) -> MistralCommonTokenizer:
        try:
            from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
            from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

            mt = MistralTokenizer.from_file(str(path))
        except Exception as exc:  # mistral-common raises several kinds for a bad file
            raise ModelLoadError(f"cannot read Mistral tokenizer {path}: {type(exc).__name__}: {exc}") from None
        if not isinstance(mt.instruct_tokenizer.tokenizer, SentencePieceTokenizer):
            raise ModelLoadError(f"{path.name}: only SentencePiece Mistral tokenizers are supported")
        return cls(path=path, instruct=mt.instruct_tokenizer)

    @property
    def sp(self) -> Any:  # mistral_common SentencePieceTokenizer
        return self.instruct.tokenizer

    @property
    def name(self) -> str:
        """For `doctor` and logs: which tokenizer this is and where it came from."""
        return f"mistral-common {self.sp.version.value} SentencePiece ({self.path.name}, {len(self)} pieces)"

    # -- ids ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.sp.n_words)

    @property
    def bos_token_id(self) -> int:
        return int(self.sp.bos_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.sp.eos_id)

    @cached_property
    def all_special_ids(self) -> list[int]:
        # Control pieces and <unk> (which SentencePiece decodes as " ⁇ "): never text.
        return sorted({*self.sp.special_ids, int(self.sp.unk_id)})

    @property
    def added_tokens_decoder(self) -> dict[int, str]:
        return {}  # a SentencePiece model has no added tokens; its controls are in all_special_ids

    @cached_property
    def pieces(self) -> list[str]:
        return list(self.sp.vocab())

    @cached_property
    def _vocab(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.pieces)}

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._vocab.get(token)

    # -- text --------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False, **_: object) -> list[int]:
        """SentencePiece's encoding (dummy "▁" in front); `add_special_tokens` adds <s>."""
        return list(self.sp.encode(text, bos=add_special_tokens, eos=False))

    def encode_infilling(self, text: str) -> list[int]:
        """`text` with no dummy prefix, as `encode_fim` encodes the suffix."""
        if not text:
            return []
        return list(self.sp.encode(INFILL_SENTINEL + text, bos=False, eos=False))[2:]

    @cached_property
    def _piece_bytes(self) -> list[bytes]:
        return [p.encode("utf-8") if self.sp.is_special(i) else piece_bytes(p) for i, p in enumerate(self.pieces)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False, **_: object) -> str:
        """Exact text of `ids`: each piece as written, a leading "▁" included."""
        special = set(self.all_special_ids) if skip_special_tokens else ()
        data = b"".join(self._piece_bytes[i] for i in ids if i not in special)
        return data.decode("utf-8", errors="replace")

    def batch_decode(self, seqs: list[list[int]], **kw: Any) -> list[str]:
        return [self.decode(ids, **kw) for ids in seqs]

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        """mistral-common's reference Codestral FIM prompt (the layout our prompts must equal)."""
        from mistral_common.protocol.fim.request import FIMRequest

        return list(self.instruct.encode_fim(FIMRequest(prompt=prefix, suffix=suffix)).tokens)


def bundled_mistral_tokenizers() -> list[Path]:
    """The SentencePiece tokenizer files mistral-common ships, Codestral-22B-v0.1's
    (`mistral_instruct_tokenizer_240323.model.v3`) first."""
    import mistral_common

    data = Path(mistral_common.__file__).parent / "data"
    return sorted(data.glob("*.model*"), key=lambda p: (p.name != CODESTRAL_V3, p.name))


def mistral_tokenizer_for(pieces: list[str], folder: Path | None = None) -> MistralCommonTokenizer | None:
    """mistral-common's tokenizer whose pieces are exactly `pieces` (a SentencePiece GGUF's token list),
    else None: a `tokenizer.model.v*` in `folder` (next to the GGUF) first, then the files mistral-common
    ships. The whole vocabulary must match, piece for piece: ids are what the model was trained on."""
    if not pieces or "[SUFFIX]" not in pieces:
        return None
    candidates = [p for p in (find_mistral_tokenizer(folder) if folder else None,) if p]
    candidates += bundled_mistral_tokenizers()
    for path in candidates:
        try:
            tok = MistralCommonTokenizer.from_file(path)
        except ModelLoadError:
            continue
        if len(tok) == len(pieces) and tok.pieces == pieces:
            return tok
    return None


def tokenizer_name(tokenizer: Any) -> str:
    """A short description of any tokenizer the engine holds (for `doctor`)."""
    name = getattr(tokenizer, "name", None)
    if isinstance(tokenizer, MistralCommonTokenizer) and name:
        return name
    return f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '') or 'Hugging Face'})"
