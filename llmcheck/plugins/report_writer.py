"""Collects one record per llmcheck item and writes the run's JSON report.

Built the way pytest's junitxml is: only on the controller (not on xdist workers), fed by
``pytest_runtest_logreport`` (records travel on the report, so they survive xdist), written in
``pytest_sessionfinish`` and announced in ``pytest_terminal_summary``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

from llmcheck.reports import json_report

RECORD_ATTR = "llmcheck"  # attribute on TestReport; pytest serialises extra attributes for xdist


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class ReportWriter:
    def __init__(self, config: pytest.Config, json_path: str):
        self.config = config
        self.json_path = Path(json_path)
        self.records: dict[str, dict[str, Any]] = {}
        self.worker_env: dict[str, Any] = {}
        self.started = time.time()
        self.written: Path | None = None

    def add(self, report: pytest.TestReport) -> None:
        record = getattr(report, RECORD_ATTR, None)
        if record is None:
            return
        env = record.pop("environment", None)
        if env and not self.worker_env:
            self.worker_env = env
        # setup, call and teardown may each carry one; the last decisive one wins (call, or a setup error)
        if report.when == "call" or record["id"] not in self.records:
            self.records[record["id"]] = record

    def environment(self) -> dict[str, Any]:
        return {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "hostname": platform.node(),
            "pytest": pytest.__version__,
            "torch": _version("torch"),
            "git_commit": git_commit(self.config.rootpath),
            **self.worker_env,
        }

    def write(self, interrupted: bool = False) -> Path:
        document = json_report.build(list(self.records.values()), self.environment(),
                                     {"name": "llmcheck", "version": _version("llmcheck")},
                                     self.started, time.time(), interrupted)
        self.written = json_report.write(self.json_path, document)
        return self.written

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.add(report)

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.write(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.written is None:
            return
        counts: dict[str, int] = {}
        for r in self.records.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no checks ran"
        terminalreporter.write_sep("-", f"llmcheck: {summary}")
        terminalreporter.write_line(f"llmcheck JSON report: {os.path.relpath(self.written)}")
