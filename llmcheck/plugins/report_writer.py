"""Collects one record per llmcheck item and writes the run's JSON (and HTML) report.

Built the way pytest's junitxml is: only on the controller (not on xdist workers), fed by
``pytest_runtest_logreport`` (records travel on the report, so they survive xdist), written in
``pytest_sessionfinish`` and announced in ``pytest_terminal_summary``.

Never lost: the JSON is rewritten atomically after every item, marked ``interrupted`` until the
session finishes, so a session killed outright (SIGKILL, OOM killer) still leaves a valid report
of everything that finished. Ctrl-C and SIGTERM end the session through pytest's own interrupt
path, which writes both reports in ``pytest_sessionfinish``.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

from llmcheck.reports import json_report
from llmcheck.reports.plain import printable
from llmcheck.results import STATUSES

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


REPORT_ELSEWHERE = 6  # exit status when every item passed but the JSON report went to the fallback path


class LlmcheckReportWarning(UserWarning):
    """The JSON report could not be written where asked and went to a fallback path."""


def _file_name(text: str) -> str:
    """``text`` as one safe path component (item ids hold ``::``, brackets and slashes)."""
    return re.sub(r"[^\w.=-]+", "_", text).strip("._")[:120] or "item"


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into pytest's interrupt path so the reports are written and workers killed."""


class ReportWriter:
    def __init__(self, config: pytest.Config, json_path: str, html_path: str | None = None):
        self.config = config
        self.json_path = Path(json_path)
        self.html_path = Path(html_path) if html_path else None
        self.records: dict[str, dict[str, Any]] = {}
        self.worker_env: dict[str, Any] = {}
        self.started = time.time()
        self.written: Path | None = None
        self.html_written: Path | None = None
        self.html_error: str | None = None
        self.json_error: str | None = None  # why the report is not where it was asked for
        self.fallback: Path | None = None  # where it went instead
        self._static_env: dict[str, Any] | None = None
        self._previous_sigterm = None

    def install_sigterm(self) -> None:
        """On SIGTERM (CI cancelling a job) interrupt like Ctrl-C; a second SIGTERM kills at once."""
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        ):
            return

        def on_sigterm(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise Terminated("SIGTERM: writing the reports of the checks that finished")

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def add(self, report: pytest.TestReport) -> bool:
        record = getattr(report, RECORD_ATTR, None)
        if record is None:
            return False
        env = record.pop("environment", None)
        if env and not self.worker_env:
            self.worker_env = env
        # setup, call and teardown may each carry one; the last decisive one wins (call, or a setup error)
        if report.when == "call" or record["id"] not in self.records:
            self.keep_artifacts(record)
            self.records[record["id"]] = record
        return True

    def environment(self) -> dict[str, Any]:
        if self._static_env is None:  # git is asked once, not after every item
            self._static_env = {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "hostname": platform.node(),
                "pytest": pytest.__version__,
                "torch": _version("torch"),
                "git_commit": git_commit(self.config.rootpath),
            }
        return {**self._static_env, **self.worker_env}

    def document(self, interrupted: bool) -> dict[str, Any]:
        return json_report.build(
            list(self.records.values()),
            self.environment(),
            {"name": "llmcheck", "version": _version("llmcheck")},
            self.started,
            time.time(),
            interrupted,
        )

    def write(self, interrupted: bool = False, html: bool = False) -> Path | None:
        """Write the JSON (and with ``html`` the page). A JSON that cannot be written where asked
        (read-only folder, full disk) goes to a fallback file in the temp folder; nothing here may
        escape into pytest, which would abort the session after the first item."""
        document = self.document(interrupted)
        self.written = self._write_json(document)
        if html and self.html_path:
            from llmcheck.reports import html as html_report

            try:
                links = os.path.relpath(self.json_path.parent, self.html_path.parent)
                self.html_written = html_report.write(
                    self.html_path, document, source=self.json_path.name, links_from=links
                )
            except Exception as exc:  # the JSON is safe; say why the page is missing instead of failing the run
                self.html_error = f"{type(exc).__name__}: {exc}"
        return self.written

    def _write_json(self, document: dict[str, Any]) -> Path | None:
        if self.fallback is None:
            try:
                return json_report.write(self.json_path, document)
            except Exception as exc:
                self.json_error = f"{type(exc).__name__}: {exc}"
                self.fallback = Path(tempfile.gettempdir()) / f"llmcheck-report-{os.getpid()}-{int(self.started)}.json"
                warnings.warn(
                    LlmcheckReportWarning(
                        f"llmcheck could not write its JSON report to {self.json_path} ({self.json_error}); "
                        f"writing it to {self.fallback} instead"
                    ),
                    stacklevel=1,
                )
        try:
            return json_report.write(self.fallback, document)
        except Exception as exc:
            self.json_error += f"; the fallback {self.fallback} failed too: {type(exc).__name__}: {exc}"
            return None

    def keep_artifacts(self, record: dict[str, Any]) -> None:
        """Copy the files a record points to next to the report (``<report>.artifacts/<item>/``) and
        point the record at the copies, relative to the report: the session's temp folder, where
        checks write them, is deleted when the session ends."""
        artifacts = record.get("artifacts") or {}
        if not artifacts:
            return
        folder = self.json_path.with_name(self.json_path.name + ".artifacts") / _file_name(record["id"])
        kept = {}
        for name, source in artifacts.items():
            source = Path(source)
            target = folder / _file_name(source.name)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if source.is_dir():
                    shutil.copytree(source, target, dirs_exist_ok=True)
                else:
                    shutil.copy2(source, target)
                kept[name] = os.path.relpath(target, self.json_path.parent)
            except OSError as exc:
                kept[name] = str(source)
                record.setdefault("artifact_errors", {})[name] = f"not copied: {type(exc).__name__}: {exc}"
        record["artifacts"] = kept

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.add(report):
            self.write(interrupted=True)  # "not finished" until pytest_sessionfinish says otherwise

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.write(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED, html=True)
        if self.json_error and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = REPORT_ELSEWHERE  # every check passed, but the report is not where CI looks

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.json_error:
            where = f"written to {self.fallback} instead" if self.written else "not written anywhere"
            terminalreporter.write_line(
                f"llmcheck JSON report NOT written to {self.json_path} ({self.json_error}): {where}", red=True
            )
        if self.written is None:
            return
        title, *lines = summary_lines(list(self.records.values()))
        terminalreporter.write_sep("-", printable(title))
        for line in lines:  # model names, messages and fault frames come from model code
            terminalreporter.write_line(printable(line))
        terminalreporter.write_line(f"llmcheck JSON report: {os.path.relpath(self.written)}")
        if self.html_written:
            terminalreporter.write_line(f"llmcheck HTML report: {os.path.relpath(self.html_written)}")
        if self.html_error:
            terminalreporter.write_line(
                f"llmcheck HTML report NOT written to {self.html_path}: {self.html_error}", red=True
            )


def summary_lines(records: list[dict[str, Any]], slowest: int = 3) -> list[str]:
    """One screen: a families x status table and the slowest checks (the first line is the title)."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        row = counts.setdefault(r.get("family", "?"), {})
        row[r["status"]] = row.get(r["status"], 0) + 1
    statuses = [s for s in STATUSES if any(s in row for row in counts.values())]
    totals = ", ".join(f"{sum(row.get(s, 0) for row in counts.values())} {s}" for s in statuses)
    lines = [f"llmcheck: {totals or 'no checks ran'}"]
    if not records:
        return lines
    width = max(len("family"), *(len(f) for f in counts))
    lines.append(f"{'family':<{width}}  " + "  ".join(f"{s:>8}" for s in statuses))
    for family in sorted(counts):
        lines.append(f"{family:<{width}}  " + "  ".join(f"{counts[family].get(s, 0) or '.':>8}" for s in statuses))
    timed = sorted((r for r in records if r.get("duration_s")), key=lambda r: -r["duration_s"])[:slowest]
    if timed:
        lines.append(
            "slowest: " + ", ".join(f"{r.get('check')} on {r.get('model')} {r['duration_s']:.1f} s" for r in timed)
        )
    return lines + fault_lines(records) + advisory_lines(records)


def fault_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per frame where checks hung or crashed (``metrics.fault``, set by the watchdog), so a
    model that hangs in every check reads as one problem: ``1 hang at model.py:25 in forward, seen in
    18 checks (eval, gradient, ...)``."""
    seen: dict[tuple[str, str], list[str]] = {}
    for r in records:
        fault = (r.get("metrics") or {}).get("fault") or {}
        if r.get("status") in ("timeout", "crashed") and fault.get("kind") in ("hang", "crash") and fault.get("at"):
            seen.setdefault((fault["kind"], fault["at"]), []).append(str(r.get("check")))
    lines = []
    for (kind, at), checks in sorted(seen.items(), key=lambda item: -len(item[1])):
        names = ", ".join(checks[:6]) + (", ..." if len(checks) > 6 else "")
        lines.append(f"1 {kind} at {at}, seen in {len(checks)} check{'s' if len(checks) > 1 else ''} ({names})")
    return lines


def advisory_lines(records: list[dict[str, Any]], width: int = 300) -> list[str]:
    """What-if findings that did not gate, one line each (clipped; the JSON report has them whole),
    under a heading that says how to gate them."""
    found = [(r, a) for r in records for a in r.get("advisory") or ()]
    if not found:
        return []
    lines = [
        f"advisory, not gated ({len(found)}): what-ifs the model file does not declare; gate them with "
        "@llmcheck.model(ships=[...]) or the check's gate setting"
    ]
    for r, finding in found:
        line = f"  {str(r.get('id', r.get('check'))).split('::', 1)[-1]}: {finding}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return lines
