"""What may leave the editor as context: never a file that commonly holds credentials, never one
of a language the user turned off.

`shareable` is asked for every other open document before it goes into a request as extra
context, whichever backend answers (a local model's prompt is kept in its KV cache, a daemon's is
shared across windows, a remote API's leaves the machine). Patterns are `secretFiles`
(server/options.py; trusted: a workspace cannot empty the list): a pattern without "/" matches the
file name, one with "/" the whole path; matching is case-insensitive, as on the file systems
where it matters most.
"""

from __future__ import annotations

import fnmatch
import urllib.parse
from collections.abc import Iterable
from pathlib import PurePosixPath

from codestral_ls.server.languages import language_for

# Folders whose every file is a secret, whatever its name.
SECRET_FOLDERS = (".ssh", ".gnupg", ".aws", ".docker", ".kube")


def uri_path(uri: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(uri).path or uri)


def is_secret(uri: str, patterns: Iterable[str]) -> bool:
    path = uri_path(uri).lower()
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


def shareable(uri: str, language_id: str, secret_files: Iterable[str], disabled_languages: Iterable[str]) -> bool:
    """May this open document go to a backend as extra context?"""
    disabled = set(disabled_languages)
    if language_id in disabled or language_for(language_id, uri) in disabled:
        return False
    return not is_secret(uri, secret_files)
