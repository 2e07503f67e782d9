"""The workspace on disk: its roots (the only folders files are read from), the path the model sees
for a file, and where an import written in a file leads (per language, candidates only: whether one
is open, exists or lies in the workspace is the caller's to check).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from codestral_ls.server.retrieval.outline import MAX_FILE_BYTES


def path_of(uri: str) -> Path | None:
    """The file system path of a file: URI (None for another scheme)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("file", ""):
        return None
    return Path(urllib.parse.unquote(parts.path))


def file_uri(path: Path) -> str:
    return path.as_uri()


@dataclass(frozen=True)
class Workspace:
    """The workspace roots: the only folders files are read from."""

    roots: tuple[Path, ...] = ()

    @classmethod
    def of(cls, uris: Iterable[str]) -> Workspace:
        roots = []
        for uri in uris:
            p = path_of(uri)
            if p is not None and p.is_absolute():
                try:
                    roots.append(p.resolve())
                except OSError:
                    continue
        return cls(tuple(dict.fromkeys(roots)))

    def root_of(self, path: Path) -> Path | None:
        """The root holding `path` once resolved (symlinks followed), or None: outside."""
        try:
            real = path.resolve()
        except OSError:
            return None
        return next((r for r in self.roots if real.is_relative_to(r)), None)

    def holds(self, uri: str, edited: str) -> bool:
        """May the open document at `uri` be context for the one at `edited`? Only a file under the
        workspace folders once resolved (not another repository, nor an `untitled:` buffer); with no
        folder known (a single file opened), the edited file's folder stands for the workspace."""
        p = path_of(uri)
        if p is None or not p.is_absolute():
            return False
        if self.roots:
            return self.root_of(p) is not None
        here = path_of(edited)
        if here is None or not here.is_absolute():
            return False
        return Workspace.of([here.parent.as_uri()]).root_of(p) is not None

    def relative(self, uri: str) -> str:
        """The path the model sees: relative to its root, else the file name."""
        p = path_of(uri)
        if p is None:
            return uri.rsplit("/", 1)[-1]
        for r in self.roots:
            if p.is_relative_to(r):
                return p.relative_to(r).as_posix()
        try:  # a root given through a symlinked path
            real = p.resolve()
            r = next((r for r in self.roots if real.is_relative_to(r)), None)
            if r is not None:
                return real.relative_to(r).as_posix()
        except OSError:
            pass
        return p.name

    def name_of(self, uri: str) -> str:
        """The name of the root holding the file (the repository's name in Qwen's layout), else ""."""
        p = path_of(uri)
        return next((r.name for r in self.roots if p is not None and p.is_relative_to(r)), "")



def read_text(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text("utf-8", errors="replace")
    except OSError:
        return None



JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs")


def resolve(module: str, here: Path, language: str, workspace: Workspace) -> list[Path]:
    """Candidate files for an import written in the file at `here`, most likely first; whether one is
    open, exists, or lies in the workspace is the caller's to check."""
    folder = here.parent
    out: list[Path] = []
    if language == "python":
        dots = len(module) - len(module.lstrip("."))
        parts = [p for p in module.lstrip(".").split(".") if p]
        if dots:
            base = folder
            for _ in range(dots - 1):
                base = base.parent
            bases = [base]
        else:
            bases = [*_python_bases(here, workspace)]
        for base in bases:
            stem = base.joinpath(*parts) if parts else base
            out += [stem.with_suffix(".py") if parts else stem / "__init__.py", stem / "__init__.py"]
    elif language in ("javascript", "javascriptreact", "typescript", "typescriptreact"):
        if not module.startswith("."):
            return []  # a package from node_modules: not the workspace's code
        stem = (folder / module)
        out += [stem, *(Path(str(stem) + e) for e in JS_EXTENSIONS), *(stem / f"index{e}" for e in JS_EXTENSIONS)]
        if stem.suffix == ".js":  # TypeScript imports name the compiled file
            out += [stem.with_suffix(e) for e in (".ts", ".tsx")]
    elif language in ("c", "cpp"):
        out += [folder / module, *(r / module for r in workspace.roots),
                *(r / "include" / module for r in workspace.roots)]
    elif language == "java":
        rel = Path(*module.split("."))
        for r in workspace.roots:
            for base in (r, r / "src" / "main" / "java", r / "src"):
                out += [base / rel.with_suffix(".java"), base / rel.parent.with_suffix(".java")]
    elif language == "rust":
        parts = [p for p in module.split("{")[0].split("::") if p]
        if parts[:1] in (["crate"], ["super"], ["self"]):
            head = parts.pop(0)
            base = folder if head == "self" else folder.parent if head == "super" else _rust_src(here, workspace)
            for k in range(len(parts), 0, -1):  # the longest prefix that is a module file
                stem = base.joinpath(*parts[:k])
                out += [stem.with_suffix(".rs"), stem / "mod.rs"]
    elif language == "go":
        for r in workspace.roots:
            gomod = r / "go.mod"
            try:
                name = next((ln.split()[1] for ln in gomod.read_text().splitlines() if ln.startswith("module ")), "")
            except (OSError, IndexError):
                continue
            if name and module.startswith(name + "/"):
                pkg = r / module[len(name) + 1:]
                try:
                    out += sorted(p for p in pkg.glob("*.go") if not p.name.endswith("_test.go"))[:8]
                except OSError:
                    pass
    return [p for p in dict.fromkeys(out) if p.suffix]


def _python_bases(here: Path, workspace: Workspace) -> list[Path]:
    """Folders an absolute Python import is looked up from: each root (and its src/), and the folder
    above the current file's top package (its sys.path entry)."""
    bases = []
    for r in workspace.roots:
        bases += [r, r / "src"]
    top = here.parent
    while workspace.root_of(top) is not None and (top / "__init__.py").exists():  # never a stat outside
        top = top.parent
    bases.append(top)
    return list(dict.fromkeys(bases))


def _rust_src(here: Path, workspace: Workspace) -> Path:
    d = here.parent
    while d.parent != d and not (d / "Cargo.toml").exists():
        if workspace.root_of(d) is None:
            break
        d = d.parent
    return d / "src"


