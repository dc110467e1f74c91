"""Where the two sides of an A/B run come from: a model file or folder, or ``git:REF:path``.

``git:REF:path`` checks REF out with ``git worktree add --detach`` into a temporary folder, so a
model file that imports its siblings (``from .layers import ...``, ``import blocks``) finds the
versions of REF, not the working tree's. ``path`` is read as ``git show REF:path`` reads it:
relative to the repository's top level, or to the current folder when it starts with ``./``.
The worktree is removed when the run ends, failed or not.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

PREFIX = "git:"


class SourceError(ValueError):
    """A BASE or HEAD argument that names no usable model file, folder or git revision."""


@dataclass(frozen=True)
class Source:
    spec: str  # as given on the command line
    path: Path  # the file or folder to load
    commit: str | None = None  # the commit REF resolved to, for git:REF:path


def git(args: list[str], cwd: Path) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"git {' '.join(args)} failed: {exc}") from None
    if out.returncode:
        raise SourceError(f"git {' '.join(args)} (in {cwd}) failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def parse(spec: str) -> tuple[str, str] | None:
    """(REF, path) of a ``git:REF:path`` spec, None for a plain path."""
    if not spec.startswith(PREFIX):
        return None
    ref, sep, path = spec[len(PREFIX) :].rpartition(":")
    if not sep or not ref or not path:
        raise SourceError(f"{spec!r}: expected git:REF:path, e.g. git:main:models/model.py or git:HEAD~1:./model.py")
    return ref, path


def resolve(spec: str, stack: ExitStack, cwd: Path | None = None) -> Source:
    """The model file or folder ``spec`` names; a git worktree made for it is removed by ``stack``."""
    cwd = Path(cwd or Path.cwd()).resolve()
    parsed = parse(spec)
    if parsed is None:
        path = (cwd / spec).resolve()
        if not path.exists():
            raise SourceError(f"{spec!r}: no such file or folder (from {cwd})")
        return Source(spec, path)
    ref, rel = parsed
    top = Path(git(["rev-parse", "--show-toplevel"], cwd))
    if rel.startswith("./"):
        rel = git(["rev-parse", "--show-prefix"], cwd) + rel[2:]
    commit = git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], top)
    git(["cat-file", "-e", f"{commit}:{rel}"], top)  # a clear error before a worktree is made
    tree, _ = worktree(commit, stack, top)
    return Source(spec, tree / rel, commit)


def worktree(ref: str, stack: ExitStack, top: Path) -> tuple[Path, str]:
    """(folder, commit): ``ref`` of the repository at ``top`` checked out detached in a temporary
    folder, removed by ``stack``."""
    commit = git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], top)
    folder = Path(tempfile.mkdtemp(prefix="llmcheck-ab-"))
    stack.callback(_remove_worktree, top, folder)
    git(["worktree", "add", "--detach", str(folder / "tree"), commit], top)
    return folder / "tree", commit


def _remove_worktree(top: Path, folder: Path) -> None:
    try:
        if (folder / "tree").exists():
            git(["worktree", "remove", "--force", str(folder / "tree")], top)
    except SourceError:
        pass  # the folder goes below; prune forgets the worktree
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            git(["worktree", "prune"], top)
        except SourceError:
            pass
