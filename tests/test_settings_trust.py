"""Where options may come from (issue 24, items 2, 5, 6): workspace settings only make the server more
private, the user's config file is read when it is safe and said when it is not, and model paths never
resolve against the folder the server runs in."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from codestral_ls.engine.config import ModelSpec
from codestral_ls.engine.errors import ModelLoadError
from codestral_ls.engine.models import loading
from codestral_ls.server import cli, config_file, options
from codestral_ls.server.config_file import read_user_config
from codestral_ls.server.lsp import create_server
from codestral_ls.server.options import (
    FIELDS,
    Options,
    camel,
    cli_overrides,
    meta,
    parse_client_options,
    parse_options,
)
from lsprotocol import types

# -- item 5: a workspace may only make the server more private ------------------------------------------

# The user's own options (config file): private, with limits.
USER, _ = parse_options({"retrieval": ["none"], "disabledLanguages": ["plaintext"], "secretFiles": ["*.key"],
                         "logDocumentText": False, "requestTimeoutMs": 5000, "readTimeoutMs": 2000,
                         "connectTimeoutMs": 1000})

# What a cloned repository's settings try (eglot .dir-locals.el, LSP4IJ project settings, initializationOptions).
WIDENING: list[tuple[str, Any]] = [
    ("retrieval", ["chunks", "definitions", "edits"]),
    ("retrieval", ["chunks"]),
    ("disabledLanguages", []),
    ("secretFiles", []),
    ("secretFiles", ["*.pem"]),
    ("logDocumentText", True),
    ("requestTimeoutMs", 0),
    ("readTimeoutMs", 0),
    ("connectTimeoutMs", 0),
    ("requestTimeoutMs", 10**9),
    ("extraContextTokens", 100000),
    ("candidates", 10**6),
    ("kvBudgetMb", 10**7),
    ("typedCacheEntries", 10**9),
    ("maxLines", 0),
    ("maxTokens", 10**6),
    ("prefixTokens", 10**7),
    ("suffixTokens", 10**7),
    ("threads", 10**4),
    ("secondOpinions", 10**4),
    ("coldTargetMs", 10**8),
    ("budgetMs", 10**8),
]


USER_ONLY = {"model", "draft_model", "trust_remote_code", "allow_download", "backend", "endpoint", "api_key_env",
             "remote_model", "allow_plain_http_key", "ca_bundle", "connect_timeout_ms", "read_timeout_ms",
             "request_timeout_ms"}


def no_wider(user: Options, got: Options) -> list[str]:
    """The ways `got` is less private or bigger than `user` allows from a workspace (the rules of issue 24
    item 5, written out here rather than read from the options' metadata)."""
    wrong = []
    for name in FIELDS:
        mine, theirs = getattr(user, name), getattr(got, name)
        limits = getattr(meta(name), "limits", None)  # sizes: the documented range
        if name in USER_ONLY and theirs != mine:
            wrong.append(f"{name}: {mine!r} -> {theirs!r}")
        elif name == "retrieval" and not set(theirs) - {"none"} <= set(mine) - {"none"}:
            wrong.append(f"{name} widened: {theirs!r}")
        elif name in ("disabled_languages", "secret_files") and not set(mine) <= set(theirs):
            wrong.append(f"{name} narrowed: {theirs!r}")
        elif name == "log_document_text" and theirs and not mine:
            wrong.append(f"{name} turned on")
        elif isinstance(theirs, int) and not isinstance(theirs, bool) and theirs != mine and (
                limits is None or not limits[0] <= theirs <= limits[1]):
            wrong.append(f"{name} = {theirs}, outside {limits}")
    return wrong


@pytest.mark.parametrize(("key", "value"), WIDENING, ids=[f"{k}={v}" for k, v in WIDENING])
def test_workspace_settings_cannot_widen(key: str, value: Any) -> None:
    got, problems = parse_client_options({key: value}, USER)
    assert no_wider(USER, got) == []
    # Refused or clamped: said; a list that only adds (disabledLanguages, secretFiles) is added to the user's.
    assert problems or meta(options.ALIASES[key]).narrow == options.MORE, f"{key}={value!r} changed silently"


def test_workspace_settings_all_at_once_and_over_earlier_workspace_settings() -> None:
    every = dict(WIDENING)
    got, problems = parse_client_options(every, USER)
    assert no_wider(USER, got) == []
    assert len(problems) == len([k for k in every if meta(options.ALIASES[k]).narrow != options.MORE])
    # A later didChangeConfiguration is measured against the user's options, not the workspace's last ones.
    narrowed, _ = parse_client_options({"disabledLanguages": ["markdown"]}, USER, USER)
    again, _ = parse_client_options({"disabledLanguages": []}, narrowed, USER)
    assert set(again.disabled_languages) >= set(USER.disabled_languages)


def test_workspace_settings_may_make_it_more_private() -> None:
    user, _ = parse_options({"logDocumentText": True})
    got, problems = parse_client_options({"retrieval": ["none"], "disabledLanguages": ["markdown"],
                                          "secretFiles": ["*.sql"], "logDocumentText": False,
                                          "candidates": 2, "maxLines": 3}, user, user)
    assert problems == []
    assert got.retrieval == ("none",) and "markdown" in got.disabled_languages
    assert "*.sql" in got.secret_files and ".env" in got.secret_files  # added to, not replaced
    assert got.log_document_text is False and (got.candidates, got.max_lines) == (2, 3)
    fewer, problems = parse_client_options({"retrieval": ["chunks"]}, user, user)
    assert fewer.retrieval == ("chunks",) and problems == []


def test_every_option_has_a_workspace_rule() -> None:
    """A new option must say what a workspace may do with it: trusted, narrowed, clamped, or harmless."""
    harmless = {"device", "dtype", "quantize", "fim_format", "runner", "n_gpu_layers", "kv_reuse", "speculation",
                "multiline", "quick_first"}
    for name in FIELDS:
        m = meta(name)
        assert m.trusted or m.narrow or m.limits or name in harmless, f"{camel(name)} has no workspace rule"
    # ... and the user's own sources are not clamped: the config file and the command line are theirs.
    got, problems = parse_options({"kvBudgetMb": 40000, "extraContextTokens": 3000, "requestTimeoutMs": 0})
    assert (got.kv_budget_mb, got.extra_context_tokens, got.request_timeout_ms) == (40000, 3000, 0) and not problems


def test_a_server_keeps_the_users_privacy_over_initialization_options_and_did_change_configuration() -> None:
    server = create_server(USER)
    shown: list[str] = []
    server.window_show_message = lambda params: shown.append(params.message)  # type: ignore[method-assign]
    server.apply_settings({"codestral": {"retrieval": ["chunks"], "logDocumentText": True, "candidates": 99}})
    server.apply_settings({"codestral": {"disabledLanguages": [], "readTimeoutMs": 0}})
    assert no_wider(USER, server.options) == []
    assert server.options.retrieval == ("none",) and server.options.read_timeout_ms == 2000
    assert len(shown) == 4
    in_force = server.stats_snapshot()["options"]  # codestral/stats says what took effect
    assert in_force["retrieval"] == ["none"] and in_force["readTimeoutMs"] == 2000 and in_force["candidates"] == 5


# -- item 6: the user's config file ---------------------------------------------------------------------


def write_config(tmp_path: Path, mode: int, text: str = 'maxLines = 3\n') -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners")
def test_group_writable_config_is_read_when_the_group_is_the_users_private_group(tmp_path: Path, monkeypatch) -> None:
    path = write_config(tmp_path, 0o664)
    monkeypatch.setattr(config_file, "private_group", lambda gid, uid: True)
    assert read_user_config(path) == ({"maxLines": 3}, [])
    monkeypatch.setattr(config_file, "private_group", lambda gid, uid: False)
    raw, problems = read_user_config(path)
    assert raw == {} and "group" in problems[0]
    raw, problems = read_user_config(write_config(tmp_path, 0o646))
    assert raw == {} and "writable by others" in problems[0]


def test_private_group_is_named_after_the_user_and_has_no_one_else(monkeypatch) -> None:
    pwd, grp = pytest.importorskip("pwd"), pytest.importorskip("grp")
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="ann"))
    for name, members, private in [("ann", [], True), ("ann", ["ann"], True), ("ann", ["bob"], False),
                                   ("staff", [], False), ("users", ["ann"], False)]:
        monkeypatch.setattr(grp, "getgrgid", lambda gid, n=name, m=members: SimpleNamespace(gr_name=n, gr_mem=m))
        assert config_file.private_group(1000, 1000) is private, (name, members)


def test_config_is_checked_on_the_open_file_not_by_path_again(tmp_path: Path, monkeypatch) -> None:
    path = write_config(tmp_path, 0o600)

    real_stat = Path.stat

    def no_stat(self: Path, *a: Any, **kw: Any) -> Any:
        if self == path:
            raise AssertionError("stat by path: the file could be swapped between the check and the read")
        return real_stat(self, *a, **kw)

    monkeypatch.setattr(Path, "stat", no_stat)
    assert read_user_config(path) == ({"maxLines": 3}, [])


def test_config_is_read_where_there_is_no_getuid(tmp_path: Path, monkeypatch) -> None:
    path = write_config(tmp_path, 0o600)
    monkeypatch.delattr(os, "getuid", raising=False)
    assert read_user_config(path) == ({"maxLines": 3}, [])


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners")
def test_a_refused_config_file_is_shown_in_the_editor(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CODESTRAL_LS_CONFIG", str(write_config(tmp_path, 0o666)))
    monkeypatch.setattr(config_file, "private_group", lambda gid, uid: False)
    served: list[Any] = []
    monkeypatch.setattr(cli, "serve", lambda *args: served.append(args) or 0)
    assert cli.main(["serve"]) == 0
    notices = served[0][2] if len(served[0]) > 2 else []
    assert any("writable by others" in n for n in notices)
    server = create_server(Options(), {}, notices)
    shown: list[types.ShowMessageParams] = []
    server.window_show_message = shown.append  # type: ignore[method-assign]
    server.show_notices()
    assert [p.type for p in shown] == [types.MessageType.Warning] and "writable by others" in shown[0].message


# -- item 2: model paths never resolve against the folder the server runs in --------------------------

HUB_IDS = ["mistralai/Codestral-22B-v0.1", "org/name", "Qwen/Qwen2.5-Coder-1.5B", "a_b/c.d-e"]


def shadow(tmp_path: Path, hub_id: str) -> Path:
    """A cloned repository holding a folder named like the user's hub model (with code to run)."""
    repo = tmp_path / "repo"
    (repo / hub_id).mkdir(parents=True)
    (repo / hub_id / "config.json").write_text('{"model_type": "llama", "auto_map": {}}')
    (repo / hub_id / "modeling_evil.py").write_text("raise SystemExit('ran the repository code')\n")
    return repo


@pytest.mark.parametrize("hub_id", HUB_IDS)
def test_a_hub_id_never_loads_a_folder_of_that_name_in_the_working_directory(tmp_path: Path, monkeypatch,
                                                                              hub_id: str) -> None:
    monkeypatch.chdir(shadow(tmp_path, hub_id))
    with pytest.raises(ModelLoadError, match="hub id"):
        loading.resolve_source(ModelSpec(model=hub_id, allow_download=False))
    fetched = tmp_path / "hf-cache" / "snapshot"
    monkeypatch.setattr(loading, "hub_snapshot", lambda repo_id: fetched, raising=False)
    source, _ = loading.resolve_source(ModelSpec(model=hub_id, allow_download=True, trust_remote_code=True))
    assert source == fetched  # the hub's files, never ./<hub id>


def test_hub_snapshot_is_an_absolute_folder(tmp_path: Path, monkeypatch) -> None:
    hub = pytest.importorskip("huggingface_hub")
    asked: dict[str, Any] = {}
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kw: asked.update(kw) or str(tmp_path / "snap"))
    assert loading.hub_snapshot("org/name") == tmp_path / "snap"
    assert "*.bin" in asked["ignore_patterns"] and "*.pt" in asked["ignore_patterns"]  # never pickles


def test_relative_paths_in_the_config_file_are_relative_to_its_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    path = write_config(folder, 0o600, 'model = "./models/m"\ndraftModel = "draft"\ncaBundle = "ca.pem"\n'
                                       'secretFiles = ["x"]\n')
    monkeypatch.chdir(shadow(tmp_path, "org/name"))
    raw, problems = read_user_config(path)
    assert problems == []
    assert raw == {"model": str(folder / "models/m"), "draftModel": str(folder / "draft"),
                   "caBundle": str(folder / "ca.pem"), "secretFiles": ["x"]}
    for kept in ("org/name", "qwen2.5-coder-1.5b", "/abs/m", "embedded"):
        key = "draftModel" if kept == "embedded" else "model"
        path.write_text(f'{key} = "{kept}"\n')
        assert read_user_config(path)[0] == {key: kept}


def test_relative_paths_on_the_command_line_are_made_absolute_where_it_ran(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["--model", "m.gguf", "--draft-model", "./d", "--ca-bundle", "ca.pem"])
    raw = cli_overrides(args)
    assert (raw["model"], raw["draftModel"], raw["caBundle"]) == (
        str(tmp_path / "m.gguf"), str(tmp_path / "d"), str(tmp_path / "ca.pem"))
    args = cli.build_parser().parse_args(["--model", "org/name"])
    assert cli_overrides(args)["model"] == "org/name"
