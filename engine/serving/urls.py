"""URLs and hosts, as every client and the daemon judge them: one place for what counts as this
machine, what of a URL may be shown, and whether a URL is usable."""

from __future__ import annotations

import ipaddress
import urllib.parse

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """This machine: `localhost` or a loopback address (127.0.0.0/8, ::1). A name that merely starts
    with "127." (`127.evil.example`) is someone else's host."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def origin_of(url: str) -> str:
    """scheme://host:port, without credentials, path or query: safe to show."""
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{format_host(u.hostname or '')}" + (f":{u.port}" if u.port else "")


def url_problem(url: str) -> str | None:
    """Why `url` is not a usable http(s) URL, or None."""
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return f"expected an http:// or https:// URL, got {url!r}"
    return None
