"""The JetBrains client: the LSP4IJ user-defined language server template in editors/jetbrains.

No IntelliJ build chain is reachable here, so this checks what LSP4IJ reads from the template
(template.json, initializationOptions.json, settings.json; see LanguageServerTemplateDeserializer
in redhat-developer/lsp4ij) and then starts the program the template names, as LSP4IJ does: with
exactly the template's initializationOptions, its settings pushed by
workspace/didChangeConfiguration once started, and a completion request (the path of LSP4IJ
before 0.20) and an inline completion request (0.20 and newer) on the known-good buffer."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import shlex
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from codestral_ls.server.options import ALIASES, parse_client_options, parse_options
from lsprotocol import types

from benchmarks.lsp_client import Client, open_doc, stop

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO / "editors" / "jetbrains"
OS_KEYS = {"default", "windows", "mac", "unix"}  # LanguageServerTemplate: OS_KEY, else "default"
KNOWN_GOOD = "def add(a, b):\n    return "
TIMEOUT_S = 300  # model load plus CPU inference on a busy 2-core machine


def _load(name: str) -> Any:
    return json.loads((TEMPLATE_DIR / name).read_text(encoding="utf-8"))


def _program_names(template: dict) -> dict[str, str]:
    """OS key -> the program (first word of the command) LSP4IJ would start."""
    out = {}
    for os_key, command in template["programArgs"].items():
        words = shlex.split(command, posix=os_key != "windows")
        if os_key != "windows" and words[:2] == ["sh", "-c"]:
            words = shlex.split(words[2])
        out[os_key] = words[0]
    return out


def _language_id_for(template: dict, filename: str) -> list[str]:
    return [m["languageId"] for m in template["fileTypeMappings"]
            if any(fnmatch.fnmatchcase(filename, p) for p in m["fileType"].get("patterns", []))]


def test_files_parse_as_json_objects() -> None:
    for name in ("template.json", "initializationOptions.json", "settings.json"):
        assert isinstance(_load(name), dict), name
    assert (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8").strip()  # shown as the instructions


def test_template_has_what_lsp4ij_reads() -> None:
    t = _load("template.json")
    assert isinstance(t.get("id"), str) and t["id"]
    assert isinstance(t.get("name"), str) and t["name"]  # getAsString: required
    args = t.get("programArgs")
    assert isinstance(args, dict) and isinstance(args.get("default"), str)  # older LSP4IJ reads only "default"
    assert set(args) <= OS_KEYS and all(isinstance(v, str) and v.strip() for v in args.values())
    for m in t.get("fileTypeMappings", []):
        assert isinstance(m.get("fileType"), dict), m  # dereferenced unconditionally
        assert isinstance(m.get("languageId"), str) and m["languageId"], m
        patterns = m["fileType"].get("patterns", [])
        assert isinstance(patterns, list) and all(isinstance(p, str) for p in patterns), m
        assert patterns or isinstance(m["fileType"].get("name"), str), m  # else LSP4IJ maps nothing
    for m in t.get("languageMappings", []):
        assert isinstance(m.get("language"), str) and isinstance(m.get("languageId"), str), m


def test_template_covers_the_languages() -> None:
    t = _load("template.json")
    expected = {"x.py": "python", "X.java": "java", "x.js": "javascript",
                "x.jsx": "javascriptreact", "x.ts": "typescript", "x.tsx": "typescriptreact", "x.go": "go",
                "x.rs": "rust", "x.c": "c", "x.cpp": "cpp", "x.cc": "cpp", "x.h": "cpp", "x.hpp": "cpp"}
    for filename, language_id in expected.items():
        assert _language_id_for(t, filename) == [language_id], filename  # exactly one mapping
    languages = {m["language"]: m["languageId"] for m in t["languageMappings"]}
    assert languages == {"Python": "python", "JAVA": "java", "go": "go", "Rust": "rust"}


def test_template_maps_only_languages_the_server_parses() -> None:
    """Every languageId the template sends has a tree-sitter grammar in the server (Kotlin has none:
    its files would get suggestions with no parse check, mode or block detection)."""
    from codestral_ls.server.languages import GRAMMARS
    t = _load("template.json")
    sent = {m["languageId"] for m in t["fileTypeMappings"]} | {m["languageId"] for m in t["languageMappings"]}
    assert sent - set(GRAMMARS) == set()


def test_readme_installs_like_the_other_clients() -> None:
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    step1 = readme[readme.index("1. Install the server"):readme.index("2. ")]
    assert "make install" in step1 and "pip install" not in step1


def test_program_is_the_projects_console_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    for os_key, program in _program_names(_load("template.json")).items():
        name = program.removesuffix(".exe") if os_key == "windows" else program
        assert name == "codestral-ls", (os_key, program)
        assert name in scripts, f"{name} is not in [project.scripts] of pyproject.toml"
    module, _, function = scripts["codestral-ls"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))


def test_options_are_ones_the_server_accepts() -> None:
    init = _load("initializationOptions.json")
    settings = _load("settings.json")
    assert set(init) <= set(ALIASES), set(init) - set(ALIASES)
    assert set(init) >= {"device", "dtype", "quantize", "budgetMs", "maxTokens", "multiline",
                         "disabledLanguages"}
    assert parse_options(init)[1] == []  # values valid too
    # Nothing the server refuses from an editor (model files, backends): it would say so on every start.
    assert parse_client_options(init, None)[1] == []
    assert parse_client_options(settings, None)[1] == []
    assert isinstance(settings.get("codestral"), dict)
    assert set(settings["codestral"]) <= set(ALIASES)
    assert parse_options(settings)[1] == []


def _program_path() -> str:
    """The template's program as LSP4IJ would find it on PATH, this venv's scripts folder first."""
    program = _program_names(_load("template.json"))["default"]
    found = shutil.which(program, path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        str(REPO / ".venv" / "bin"), os.environ.get("PATH", "")]))
    assert found, f"{program} is not installed (pip install -e . in the venv)"
    return found


def _apply(text: str, edit_range: types.Range, new_text: str) -> str:
    lines = text.split("\n")

    def offset(p: types.Position) -> int:  # ASCII document: UTF-16 units are characters
        return sum(len(line) + 1 for line in lines[:p.line]) + p.character

    return text[:offset(edit_range.start)] + new_text + text[offset(edit_range.end):]


async def _stats(client: Client) -> dict:
    s = await client.protocol.send_request_async("codestral/stats", {})
    return s if isinstance(s, dict) else {k: getattr(s, k) for k in dir(s) if not k.startswith("_")}


@pytest.mark.editor
@pytest.mark.model
async def test_template_server_completes_known_good_buffer() -> None:
    init_options = _load("initializationOptions.json")
    settings = _load("settings.json")
    program = _program_path()
    err = tempfile.NamedTemporaryFile(prefix="codestral-jetbrains-", suffix=".err", delete=False)
    err.close()
    client = Client()
    # stderr to a file: an unread pipe could fill up and stall the server.
    await client.start_io("sh", "-c", 'exec "$0" 2>>"$1"', program, err.name, cwd=str(REPO))
    try:
        caps = types.ClientCapabilities(
            window=types.WindowClientCapabilities(work_done_progress=True),
            workspace=types.WorkspaceClientCapabilities(configuration=True, did_change_configuration=(
                types.DidChangeConfigurationClientCapabilities(dynamic_registration=True))),
            text_document=types.TextDocumentClientCapabilities(
                completion=types.CompletionClientCapabilities(completion_item=types.ClientCompletionItemOptions(
                    snippet_support=True, insert_replace_support=False)),
                inline_completion=types.InlineCompletionClientCapabilities()))
        result = await asyncio.wait_for(client.initialize_async(types.InitializeParams(
            capabilities=caps, initialization_options=init_options, process_id=os.getpid(),
            root_uri=REPO.as_uri())), 120)
        assert result.capabilities.completion_provider is not None
        assert result.capabilities.inline_completion_provider is not None
        assert "codestral.accept" in result.capabilities.execute_command_provider.commands
        client.initialized(types.InitializedParams())
        # UserDefinedLanguageClient pushes settings.json once the server has started.
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))

        uri = (REPO / "jetbrains_known_good.py").as_uri()  # never written: the text lives in didOpen
        language_id = _language_id_for(_load("template.json"), "jetbrains_known_good.py")[0]
        open_doc(client, uri, KNOWN_GOOD, language=language_id)
        here = types.Position(line=1, character=len("    return "))
        # The server answers nothing while the model loads (LSP4IJ shows its $/progress meanwhile).
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while not any(getattr(v, "kind", None) == "end" or (isinstance(v, dict) and v.get("kind") == "end")
                      for v in client.progress):
            assert asyncio.get_running_loop().time() < deadline, f"the model did not load: {client.progress}"
            await asyncio.sleep(0.2)

        # LSP4IJ before 0.20: the completion popup.
        completion = await asyncio.wait_for(client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=here,
            context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked))), TIMEOUT_S)
        items = completion.items if isinstance(completion, types.CompletionList) else completion
        assert items, "no completion items"
        item = items[0]
        assert isinstance(item.text_edit, types.TextEdit)
        done = _apply(KNOWN_GOOD, item.text_edit.range, item.text_edit.new_text)
        assert done.split("\n")[1] == "    return a + b", done
        # LSP4IJ runs the item's command after inserting it.
        assert item.command is not None and item.command.command == "codestral.accept"
        await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command=item.command.command, arguments=item.command.arguments))
        assert (await _stats(client))["accepted"] == 1

        # LSP4IJ 0.20 and newer: inline completion.
        inline = await asyncio.wait_for(client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=here,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))),
            TIMEOUT_S)
        inline_items = inline.items if isinstance(inline, types.InlineCompletionList) else inline
        assert inline_items, "no inline completion items"
        first = inline_items[0]
        text = first.insert_text if isinstance(first.insert_text, str) else first.insert_text.value
        done = _apply(KNOWN_GOOD, first.range or types.Range(start=here, end=here), text)
        assert done.split("\n")[1] == "    return a + b", done

        problems = [m.message for m in client.messages]  # e.g. "codestral-ls settings: unknown option"
        assert problems == [], problems
    except BaseException:
        print(f"server log ({program}):\n{Path(err.name).read_text(errors='replace')}")
        raise
    finally:
        await stop(client)
        log = Path(err.name)
        if log.exists():
            log.unlink()
