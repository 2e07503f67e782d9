"""Fill-in-the-middle prompt formats, built as token ids per model family.

Strings are never concatenated with control tokens and re-tokenized: each piece of text is encoded
on its own and the control tokens are inserted as ids, so a prompt can never be confused by text
that happens to spell a control token, and the token layout is exactly the family's training one.

SentencePiece families (Codestral, CodeLlama) follow their reference encoders (mistral-common's
`encode_fim`, Meta's `infilling_prompt_tokens`): the prefix starts the text, so it keeps the dummy
"▁" that `encode()` puts in front; the suffix (and text typed after the prefix) is encoded without
it. Mistral models get their tokenizer from mistral-common (`tokenizer.MistralCommonTokenizer`).

`build()` returns the prompt ids plus the `heal` text: the last token of the text before the
cursor is taken back out of the prompt and the model is constrained to regenerate it, so a cursor
in the middle of a word (or after indentation) does not force an unnatural token boundary. With
nothing typed, the prompt is exactly the family's prompt minus that token, and `heal` is exactly
its text (decoded piece by piece, so a SentencePiece "▁return" owes " return").

Extra context (other files' snippets, server/retrieval/) goes first, where each family reads it
and where it keeps the KV cache: typing in the current file changes only what comes after it.
Families trained on repository context (Qwen2.5-Coder, StarCoder2) get their training layout,
`<|repo_name|>repo\n<|file_sep|>path\ntext\n…<|file_sep|>current path\n<|fim_prefix|>…`; the
others (Codestral, DeepSeek, CodeLlama) get the files as text after BOS, before the FIM tokens,
each under a comment naming its path. Without extra files the prompt is the family's plain one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from codestral_ls.engine.models.tokenizer import piece_decoder

Order = Literal["spm", "psm"]
# mistral-common's `_encode_infilling` and Meta's CodeLlama `encode_infilling` both cut off "☺".
SENTINEL = "☺"


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ..., split_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: list[int], **kw: object) -> str: ...
    def convert_tokens_to_ids(self, token: str) -> int | None: ...
    def get_vocab(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class FimProfile:
    """How one family lays out a FIM prompt; `order` 'spm' means suffix first (Codestral)."""

    name: str
    order: Order
    prefix_token: str | None
    suffix_token: str
    middle_token: str | None
    stop_tokens: tuple[str, ...]
    bos: bool = False
    file_sep_token: str | None = None
    repo_name_token: str | None = None
    # SentencePiece tokenizers prepend a space to every encode(): the prefix keeps it (it starts
    # the text, as in the family's reference encoder), the suffix and typed text drop it.
    strip_dummy_prefix: bool = False


CODESTRAL = FimProfile(
    name="codestral",
    order="spm",
    prefix_token="[PREFIX]",
    suffix_token="[SUFFIX]",
    middle_token=None,  # mistral-common ends the prompt with the prefix: no [MIDDLE]
    stop_tokens=("</s>",),
    bos=True,
    strip_dummy_prefix=True,
)
QWEN = FimProfile(
    name="qwen",
    order="psm",
    prefix_token="<|fim_prefix|>",
    suffix_token="<|fim_suffix|>",
    middle_token="<|fim_middle|>",
    stop_tokens=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>",
                 "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    file_sep_token="<|file_sep|>",
    repo_name_token="<|repo_name|>",
)
STARCODER2 = FimProfile(
    name="starcoder2",
    order="psm",
    prefix_token="<fim_prefix>",
    suffix_token="<fim_suffix>",
    middle_token="<fim_middle>",
    stop_tokens=("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    file_sep_token="<file_sep>",
    repo_name_token="<repo_name>",
)
DEEPSEEK = FimProfile(
    name="deepseek",
    order="psm",
    prefix_token="<｜fim▁begin｜>",
    suffix_token="<｜fim▁hole｜>",
    middle_token="<｜fim▁end｜>",
    stop_tokens=("<｜end▁of▁sentence｜>", "<|EOT|>"),
    bos=True,
)
CODELLAMA = FimProfile(
    name="codellama",
    order="psm",
    prefix_token="▁<PRE>",
    suffix_token="▁<SUF>",
    middle_token="▁<MID>",
    stop_tokens=("▁<EOT>", "</s>"),
    bos=True,
    strip_dummy_prefix=True,
)
PROFILES = {p.name: p for p in (CODESTRAL, QWEN, STARCODER2, DEEPSEEK, CODELLAMA)}
# Qwen2.5-Coder in suffix-first order, kept for the A/B that shows why PSM is the default there.
PROFILES["qwen-spm"] = FimProfile(**{**QWEN.__dict__, "name": "qwen-spm", "order": "spm"})


def detect_profile(tokenizer: Tokenizer, override: str | None = None) -> FimProfile:
    """Pick the profile whose control tokens the tokenizer has; `override` names one explicitly."""
    if override and override != "auto":
        if override not in PROFILES:
            raise ValueError(f"unknown FIM format {override!r}; choose one of {', '.join(PROFILES)}")
        return PROFILES[override]
    vocab = tokenizer.get_vocab()
    for profile in (CODESTRAL, QWEN, STARCODER2, DEEPSEEK, CODELLAMA):
        if profile.suffix_token in vocab and (profile.prefix_token or "") in vocab | {"": 0}:
            return profile
    raise ValueError(
        "the tokenizer has no known fill-in-the-middle tokens ([SUFFIX]/[PREFIX], <|fim_prefix|>, "
        "<fim_prefix>, <｜fim▁begin｜>, <PRE>); pass --fim-format to choose one"
    )


@dataclass
class FimPrompt:
    """Prompt ids, the text the model must regenerate first (`heal`), and the profile's stop ids."""

    ids: list[int]
    heal: str
    stop_ids: frozenset[int]


@dataclass
class FimEncoder:
    """Encodes FIM prompts for one tokenizer + profile; caches the control token ids."""

    tokenizer: Tokenizer
    profile: FimProfile
    _ids: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        vocab = self.tokenizer.get_vocab()
        wanted = [self.profile.prefix_token, self.profile.suffix_token, self.profile.middle_token,
                  self.profile.file_sep_token, self.profile.repo_name_token, *self.profile.stop_tokens]
        for tok in wanted:
            if tok and tok in vocab:
                self._ids[tok] = vocab[tok]
        for tok in (self.profile.suffix_token, self.profile.prefix_token, self.profile.middle_token):
            if tok and tok not in self._ids:
                raise ValueError(f"{self.profile.name} FIM format needs token {tok!r}, absent here")
        bos = getattr(self.tokenizer, "bos_token_id", None)
        self.bos_id: int | None = bos if self.profile.bos else None
        # A generated control token ([SUFFIX], <|fim_prefix|>, ...) ends the middle as well.
        controls = (self.profile.prefix_token, self.profile.suffix_token, self.profile.middle_token)
        self.stop_ids = frozenset(self._ids[t] for t in (*self.profile.stop_tokens, *controls) if t in self._ids)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            self.stop_ids = self.stop_ids | {eos}
        if hasattr(self.tokenizer, "encode_infilling"):
            # mistral-common: every control piece ([INST], [control_57] ...) ends the middle; none is code.
            self.stop_ids = self.stop_ids | set(self.tokenizer.all_special_ids)
        self._dummy = self._dummy_prefix_ids() if self.profile.strip_dummy_prefix else []
        # A Hugging Face SentencePiece decoder drops a lone piece's leading space: decode pieces.
        self._pieces = piece_decoder(self.tokenizer)

    def _dummy_prefix_ids(self) -> list[int]:
        # What encode() puts before any text (a lone "▁" for SentencePiece); measured, not assumed.
        probe = "\x01"
        return self._encode(probe)[:-1] or []

    def encode_start(self, text: str) -> list[int]:
        """Encode text that starts the document's text (the prefix): SentencePiece's dummy "▁" stays."""
        return self._encode(text) if text else []

    def encode_text(self, text: str) -> list[int]:
        """Encode a piece of infill text with no special tokens and no dummy prefix space."""
        if not text:
            return []
        if not self._dummy:
            return self._encode(text)
        infilling = getattr(self.tokenizer, "encode_infilling", None)
        if infilling is not None:  # mistral-common's own suffix encoding: the reference itself
            return list(infilling(text))
        # The reference encoders' trick: encode behind a sentinel and cut the sentinel's tokens off.
        base = self._encode(SENTINEL)
        ids = self._encode(SENTINEL + text)
        return ids[len(base):] if ids[: len(base)] == base else ids

    def _encode(self, text: str) -> list[int]:
        # Text that spells a control token ("<|fim_prefix|>" in a file) stays plain text.
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        """Exact text of `ids`, a leading SentencePiece space included (healing owes it)."""
        if self._pieces is not None:
            return self._pieces(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def build(self, prefix: str, suffix: str, forced_middle: str = "",
              extra_files: tuple[tuple[str, str], ...] = (), heal: bool = True,
              path: str = "", repo: str = "") -> FimPrompt:
        """Token ids for `prefix|cursor|suffix`, where `forced_middle` was typed after the anchor.

        The text before the cursor is `prefix + forced_middle`; keeping them apart lets the prompt
        stay byte-identical across keystrokes while the user types at an anchored position.
        `path` (the current file's) and `repo` (the workspace's name) label the extra files' block.
        """
        p = self.profile
        # The prefix starts the text; for SentencePiece it keeps its dummy "▁" (see module docstring).
        prefix_ids = self.encode_start(prefix) if self._dummy else self.encode_text(prefix)
        heal_text = ""
        middle_text = forced_middle
        if heal and prefix_ids:
            # The prefix's last token always moves into the middle, typed text or not, so the
            # prompt before the middle is the same at every keystroke of an anchored edit.
            last = self.decode(prefix_ids[-1:])
            if "\ufffd" not in last:  # never split a multi-byte character
                prefix_ids.pop()
                middle_text = last + forced_middle
                if not forced_middle:
                    heal_text = last  # exactly the piece taken out, not a re-encoding of its text
        if heal_text:
            middle_ids: list[int] = []
        elif not prefix and self._dummy:
            middle_ids = self.encode_start(middle_text)  # typed text is the start of the text
        else:
            middle_ids = self.encode_text(middle_text)
        if heal and middle_ids:
            heal_text = self.decode(middle_ids[-1:])
            if "\ufffd" in heal_text:
                heal_text = ""
            else:
                middle_ids.pop()
        head: list[int] = [self.bos_id] if self.bos_id is not None else []
        head += self.extra_context(extra_files, path, repo)
        suffix_part = [self._ids[p.suffix_token], *self.encode_text(suffix)]
        if p.order == "spm":
            prefix_part = [self._ids[p.prefix_token]] if p.prefix_token else []
            ids = head + suffix_part + prefix_part + prefix_ids
            if p.middle_token:
                ids.append(self._ids[p.middle_token])
        else:
            ids = head + [self._ids[p.prefix_token]] + prefix_ids + suffix_part
            ids.append(self._ids[p.middle_token])
        ids += middle_ids
        return FimPrompt(ids=ids, heal=heal_text, stop_ids=self.stop_ids)

    def spine(self, text: str, extra_files: tuple[tuple[str, str], ...] = (), path: str = "",
              repo: str = "") -> list[int] | None:
        """The ids every prompt whose prefix starts with `text` starts with: the head and the prefix
        token, then `text` (a prompt with a shorter prefix shares all but the last few). None for a
        suffix-first family (Codestral): there the suffix comes first and no two cursors share it."""
        p = self.profile
        if p.order != "psm":
            return None
        head: list[int] = [self.bos_id] if self.bos_id is not None else []
        head += self.extra_context(extra_files, path, repo)
        body = self.encode_start(text) if self._dummy else self.encode_text(text)
        return head + [self._ids[p.prefix_token], *body]

    def extra_context(self, extra_files: tuple[tuple[str, str], ...], path: str = "", repo: str = "") -> list[int]:
        """The ids of the extra files' block, placed right after BOS (empty without extra files)."""
        if not extra_files:
            return []
        sep = self._ids.get(self.profile.file_sep_token or "")
        if sep is None:
            # No repository tokens: the files as text, each under a comment naming it, then the
            # current file's name; this text starts the prompt's text (SentencePiece keeps its "▁").
            text = "".join(f"{_comment(p)} {p}\n{t.rstrip()}\n\n" for p, t in extra_files)
            if path:
                text += f"{_comment(path)} {path}\n"
            return self.encode_start(text) if self._dummy else self.encode_text(text)
        ids: list[int] = []
        repo_id = self._ids.get(self.profile.repo_name_token or "")
        if repo_id is not None and repo:
            ids += [repo_id, *self.encode_text(f"{repo}\n")]
        for name, text in extra_files:
            ids += [sep, *self.encode_text(f"{name}\n{text.rstrip()}\n")]
        ids.append(sep)
        if path:
            ids += self.encode_text(f"{path}\n")
        return ids


# Line comment of a file's language, by extension, for naming files in plain-text extra context.
_HASH_COMMENT = (".py", ".rb", ".sh", ".bash", ".toml", ".yaml", ".yml", ".pl", ".r", ".jl")


def _comment(path: str) -> str:
    return "#" if path.lower().endswith(_HASH_COMMENT) else "//"
