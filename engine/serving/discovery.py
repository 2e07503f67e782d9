"""How servers find the engine daemon: the discovery file, written by `codestral-ls engine serve` and
read by `--engine auto` before every request.

The file holds {host, port, url, token, pid}, readable by the user only (0600, in a 0700 folder of
the user's cache dir). It is trusted only when the file and its folder are this user's and nobody
else can write them: another local user could otherwise plant a file that sends our requests (the
user's code) to their own server. No symlinks are followed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from codestral_ls.engine.serving.urls import format_host

TOKEN_ENV = "CODESTRAL_LS_ENGINE_TOKEN"  # a fixed token for the daemon and its clients (else random)


def daemon_file() -> Path:
    """Where the running daemon says how to reach it: <cache dir>/engine.serve/daemon.json."""
    from codestral_ls.engine.models.embedded import cache_dir

    return cache_dir() / "engine.serve" / "daemon.json"


@dataclass(frozen=True)
class DaemonInfo:
    host: str
    port: int
    token: str
    pid: int

    @property
    def url(self) -> str:
        return f"http://{format_host(self.host)}:{self.port}"


def read_daemon_file(path: Path) -> DaemonInfo | None:
    """The file's contents; None when there is none; ValueError when it is unreadable or untrusted.

    Trusted only when the file and its folder are this user's and nobody else can write them (the
    file: nor read it): another local user could otherwise plant a file that sends our requests
    (the user's code) to their own server. No symlinks followed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc} (a symlink is refused)") from None
    try:
        _check_private(path.parent, os.lstat(path.parent), folder=True)
        _check_private(path, os.fstat(fd), folder=False)
        with os.fdopen(fd, encoding="utf-8") as f:
            fd = -1
            raw = json.loads(f.read(65536))
        return DaemonInfo(host=str(raw["host"]), port=int(raw["port"]), token=str(raw["token"]), pid=int(raw["pid"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _check_private(path: Path, st: os.stat_result, folder: bool) -> None:
    import stat

    if st.st_uid != os.getuid():
        raise ValueError(f"{path} belongs to uid {st.st_uid}, not to you: not trusted")
    if not (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)):
        raise ValueError(f"{path} is not a {'folder' if folder else 'regular file'}: not trusted")
    if st.st_mode & (0o022 if folder else 0o077):
        raise ValueError(f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):o}): not trusted")


def private_folder(folder: Path) -> None:
    """Make `folder` (the user's own) 0700 on the open folder, never through a symlink: a link planted
    there would have its target's mode changed, and the token written into it. ValueError otherwise."""
    import stat

    if not hasattr(os, "fchmod"):  # Windows: the folder is in the user's profile, its ACLs are theirs
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ValueError(f"cannot open folder {folder} ({exc.strerror}; a symlink is not followed): "
                         f"not trusted") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise ValueError(f"{folder} is not a folder of yours: not trusted")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def write_daemon_file(path: Path, info: DaemonInfo) -> None:
    """Write atomically, readable by the user only (the token is a credential)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({**asdict(info), "url": info.url}, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process of this user (another user's process is not our daemon)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
