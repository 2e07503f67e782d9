"""What may leave the editor: never a file that commonly holds credentials, never one of a language
the user turned off, never a document outside the workspace folders as context.

`refused` is asked for the document being edited before anything of it goes to a backend (a
completion, a warm-up, a spine prefill, a next-line prefetch): a secret file gets no completion
at all, whichever backend answers (a local model's prompt is kept in its KV cache, a daemon's is
shared across windows, a remote API's leaves the machine). `shareable` is asked for every other
document before it goes into a request as extra context.

Patterns are `secretFiles` (server/options.py; trusted: a workspace cannot empty the list): a
pattern without "/" matches the file name, one with "/" the whole path; matching is
case-insensitive, as on the file systems where it matters most. A file: URI is checked by its
name and, when it is a symlink (or lies under one), by its resolved target too: `settings.py ->
.env` is a secret file.
"""

from __future__ import annotations

import fnmatch
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import PurePosixPath

from codestral_ls.server.languages import language_for

# Folders whose every file is a secret, whatever its name.
SECRET_FOLDERS = (".ssh", ".gnupg", ".aws", ".docker", ".kube")
SECRET = "a secret file (secretFiles): nothing of it is sent to any backend"


def uri_path(uri: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(uri).path or uri)


def _resolved(uri: str) -> str | None:
    """The real path of a file: URI when it differs from its own (symlinks followed), else None."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("file", ""):
        return None
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        return None
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return None
    return real if real != os.path.normpath(path) else None


def _matches(path: str, patterns: Iterable[str]) -> bool:
    path = path.lower()
    parts = PurePosixPath(path).parts
    if any(folder in parts[:-1] for folder in SECRET_FOLDERS):
        return True
    name = parts[-1] if parts else path
    for pattern in patterns:
        pattern = pattern.lower()
        if "/" not in pattern:
            hit = fnmatch.fnmatchcase(name, pattern)
        else:  # a path pattern: anchored at the root if it says so, else at any folder
            hit = fnmatch.fnmatchcase(path, pattern if pattern.startswith("/") else "*/" + pattern)
        if hit:
            return True
    return False


def is_secret(uri: str, patterns: Iterable[str]) -> bool:
    """Does `uri` (a URI or a path) name a secret file, by its own name or its resolved target's?"""
    patterns = tuple(patterns)
    if _matches(uri_path(uri), patterns):
        return True
    real = _resolved(uri)
    return real is not None and _matches(real, patterns)


def refused(uri: str, language_id: str, secret_files: Iterable[str], disabled_languages: Iterable[str]) -> str:
    """Why nothing of the document at `uri` may go to a backend ("" when it may)."""
    language = language_for(language_id, uri)
    disabled = set(disabled_languages)
    if language_id in disabled or language in disabled:
        return f"completions are off for {language}"
    if is_secret(uri, secret_files):
        return f"{uri_path(uri).rsplit('/', 1)[-1]} is {SECRET}"
    return ""


def shareable(uri: str, language_id: str, secret_files: Iterable[str], disabled_languages: Iterable[str]) -> bool:
    """May this open document go to a backend as extra context?"""
    return not refused(uri, language_id, secret_files, disabled_languages)
