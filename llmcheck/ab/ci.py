"""``llmcheck ci``'s steps that run things: the check suite on HEAD (and on BASE), and the gate.

The recipe (docs/ci.md) has two halves because the project's measurements say so: check
statuses are stable across runs, so a pull request's statuses are compared with the report the
last ``main`` run stored; timings are not (two stored runs on a shared runner drift further apart
than a 10 % change), so performance is judged by ``llmcheck ab``, BASE and HEAD interleaved on the
same runner. This module runs the suite in a subprocess (``pytest --llmcheck``, exactly as a user
would) and decides which status changes block; the command line (`llmcheck.ab.cli`) ties the
steps together and the comment is rendered by `llmcheck.reports.ci_comment`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcheck.ab.sources import git, worktree

# Rows of `llmcheck compare` that are about statuses; its sample and metric rows compare timings of
# two separate runs, which the A/B half judges instead.
STATUS_KINDS = ("status", "missing")


@dataclass
class Suite:
    """One ``pytest --llmcheck`` run: its report (or why there is none) and its exit status."""

    label: str  # HEAD or BASE
    report: Path
    returncode: int
    command: list[str]
    output: str = ""  # the tail of pytest's output, shown when no report was written

    @property
    def written(self) -> bool:
        return self.report.is_file()


def run_suite(
    label: str, models: list[str], report: Path, pytest_args: str = "", cwd: Path | None = None, timeout: float = 3600
) -> Suite:
    """``pytest --llmcheck MODELS --llmcheck-json REPORT`` in a subprocess, in ``cwd``."""
    report = report.resolve()
    report.parent.mkdir(parents=True, exist_ok=True)
    if report.exists():
        report.unlink()  # a report left from an earlier run must not stand in for this one
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--llmcheck",
        *models,
        "--llmcheck-json",
        str(report),
        "-p",
        "no:cacheprovider",
        *shlex.split(pytest_args),
    ]
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())
        code, output = done.returncode, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        code, output = 124, f"the suite ran past {timeout:g} s: {exc}"
    return Suite(label, report, code, cmd, output)


def _env() -> dict[str, str]:
    # The suite must import the llmcheck this command runs (an editable checkout, a test's sys.path).
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([here, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def base_checkout(ref: str, stack, cwd: Path | None = None) -> tuple[Path, str, Path]:
    """A temporary worktree of ``ref``: (the folder matching ``cwd`` inside it, the commit, its top).
    Removed when ``stack`` closes."""
    cwd = Path(cwd or Path.cwd()).resolve()
    top = Path(git(["rev-parse", "--show-toplevel"], cwd))
    tree, commit = worktree(ref, stack, top)
    return tree / cwd.relative_to(top.resolve()), commit, top


def gated(row: dict[str, Any], gate: list[str]) -> bool:
    """Whether a status regression of this row blocks: ``gate`` names checks or families ("all":
    every check; an empty list: none)."""
    if "all" in gate:
        return True
    return str(row.get("check")) in gate or str(row.get("family", "")) in gate


def status_rows(comparison: dict[str, Any], head: dict[str, Any], gate: list[str]) -> list[dict[str, Any]]:
    """The status rows of a comparison, each marked ``blocking`` (a gated regression) or not.
    An item that already failed on BASE and still fails is no row at all: it does not block."""
    families = {r["id"]: r.get("family") for r in head.get("results", [])}
    rows = []
    for row in comparison["rows"]:
        if row["kind"] not in STATUS_KINDS:
            continue
        row = {**row, "family": families.get(row["id"], row.get("check"))}
        row["blocking"] = row["verdict"] == "regression" and gated(row, gate)
        rows.append(row)
    return rows


def parse_gate(text: str) -> list[str]:
    """``all`` (default), ``none``, or check names and families separated by commas."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    return [] if names == ["none"] else names


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
