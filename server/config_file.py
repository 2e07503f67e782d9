"""The user's config file: where it is, whether it may be trusted, and its paths made absolute.

Only the user's own sources (this file and the command line) may widen what the server sends or where
it loads from (server/options.py: editor and workspace settings only make it more private), so the file
is read once, checked on the opened file (fstat), and its relative paths resolve against its folder.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from codestral_ls.engine.models import catalog


def user_config_file() -> Path:
    """$CODESTRAL_LS_CONFIG, else <user config dir>/codestral-ls/config.toml (~/.config on Linux)."""
    env = os.environ.get("CODESTRAL_LS_CONFIG")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("codestral-ls", appauthor=False)) / "config.toml"


def read_user_config(path: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """The config file's options (the same keys as the flags' names, camelCase or snake_case),
    or {} when there is none; problems say why a file was not read. Relative paths in it (model,
    draftModel, caBundle) are relative to the file's folder, never to where the server runs."""
    path = path or user_config_file()
    try:
        # The checks and the read are on one open file (fstat): a file swapped between a check by
        # path and the read could not slip through.
        with open(path, "rb") as f:
            refused = unsafe_config(os.fstat(f.fileno()))
            data = f.read()
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [f"cannot read {path}: {exc.strerror or exc}"]
    if refused:
        return {}, [f"{path} {refused}: ignored"]
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, [f"{path} is not valid TOML: {exc}"]
    raw = raw.get("codestral", raw) if isinstance(raw.get("codestral"), dict) else raw
    return resolve_paths(raw, path.expanduser().absolute().parent), []


def unsafe_config(st: os.stat_result) -> str:
    """Why a config file with this status must not be trusted, or "": it must be the user's, and
    writable by nobody else. Group-writable is fine when the group is the user's private group
    (umask 002 systems: the group named after the user, with no other member). Without POSIX
    owners (Windows: no os.getuid) the file's ACLs are the user profile's: accepted."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return ""
    uid = getuid()
    if st.st_uid != uid:
        return "is not owned by you"
    if st.st_mode & 0o002:
        return "is writable by others (chmod o-w)"
    if st.st_mode & 0o020 and not private_group(st.st_gid, uid):
        return "is writable by its group, which is not your private group (chmod g-w)"
    return ""


def private_group(gid: int, uid: int) -> bool:
    """Whether `gid` is the user's private group: named after the user, with no other member (as
    useradd makes them where the umask is 002)."""
    try:
        import grp
        import pwd

        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return group.gr_name == user.pw_name and all(m == user.pw_name for m in group.gr_mem)


PATH_OPTIONS = ("model", "draft_model", "ca_bundle")
PATH_KEYS = {*PATH_OPTIONS, "draftModel", "caBundle"}  # as the options' names are written, snake or camel


def resolve_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`raw` with the relative paths of PATH_OPTIONS made absolute against `folder` (`~` expanded);
    names of packaged models, "embedded" and hub ids are left as they are."""
    out = dict(raw)
    for key, value in raw.items():
        if key not in PATH_KEYS or not isinstance(value, str) or not value:
            continue
        if value == "embedded" or catalog.is_hub_id(value) or (key == "model" and catalog.is_name(value)):
            continue
        path = Path(value).expanduser()
        out[key] = str(path if path.is_absolute() else folder / path)
    return out
