"""The languages the server knows: tree-sitter grammars, file extensions, comment and quote
characters. One table each, read by the cursor analysis, post-processing and retrieval."""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)

# languageId → (module, attribute holding the grammar)
GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}
EXTENSIONS = {".py": "python", ".js": "javascript", ".jsx": "javascriptreact", ".ts": "typescript",
              ".tsx": "typescriptreact", ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
              ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".cxx": "cpp"}
LINE_COMMENTS = {"python": "#", "javascript": "//", "javascriptreact": "//", "typescript": "//",
                 "typescriptreact": "//", "go": "//", "rust": "//", "java": "//", "c": "//", "cpp": "//"}
# What opens a string or character literal, where not all of " ' and the backtick: in Rust a ' is
# mostly a lifetime (`&'a str`), not a quote.
QUOTES = {"python": "\"'", "rust": "\"", "java": "\"'", "c": "\"'", "cpp": "\"'"}
# Inside these the suggestion stays on one line whatever the line looks like.


def language_for(language_id: str, path: str = "") -> str:
    if language_id in GRAMMARS:
        return language_id
    for ext, lang in EXTENSIONS.items():
        if path.endswith(ext):
            return lang
    return language_id or "plaintext"


@functools.cache
def parser(language: str) -> Any:  # tree_sitter.Parser | None
    spec = GRAMMARS.get(language)
    if spec is None:
        return None
    try:
        import tree_sitter

        module = importlib.import_module(spec[0])
        return tree_sitter.Parser(tree_sitter.Language(getattr(module, spec[1])()))
    except Exception as exc:  # a missing or broken grammar degrades to plain-text context
        log.warning("no tree-sitter grammar for %s: %s", language, exc)
        return None
