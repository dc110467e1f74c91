"""Progress on long runs: while a check runs longer than ``llmcheck_progress`` seconds, a line every
that many seconds says which model and check is running, for how long, and its last heartbeat.

pytest prints nothing between an item's start and its result, so a 10-minute latency sweep looks
like a hang. The line is written from a helper thread while the main thread waits on the worker;
the thread is stopped (and joined) before pytest reports the item, so the two never write at once.
Output capture is suspended around the write, as pytest's own live logging does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest


class Ticker:
    """Writes ``llmcheck: running MODEL::CHECK for N s (last progress: ...)`` every ``interval`` s."""

    def __init__(self, config: pytest.Config, label: str, interval: float, heartbeat: Callable[[], dict | None]):
        self.config, self.label, self.interval, self.heartbeat = config, label, interval, heartbeat
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmcheck-progress", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(self.line())

    def line(self) -> str:
        beat = self.heartbeat() or {}
        info = ", ".join(f"{k}={v}" for k, v in beat.items() if k != "op")
        return f"llmcheck: running {self.label} for {time.monotonic() - self.started:.0f} s" + (
            f" (last progress: {info})" if info else ""
        )

    def _write(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or self._stop.is_set():
            return
        if capture is None:
            self._line(reporter, line)
            return
        with capture.global_and_fixture_disabled():
            self._line(reporter, line)

    def _line(self, reporter, line: str) -> None:
        reporter.ensure_newline()  # after "model.py ..": the next result starts a fresh line
        writer = self.config.get_terminal_writer()
        if writer.width_of_current_line:  # -q prints result letters without a file name
            writer.line()
        writer.line(line)


def interval(config: pytest.Config) -> float:
    try:
        return float(config.getini("llmcheck_progress") or 0)
    except ValueError:
        raise pytest.UsageError(
            f"llmcheck_progress = {config.getini('llmcheck_progress')!r}: expected seconds "
            "(a number; 0 turns progress lines off)"
        ) from None


def for_item(item: Any, pool: Any, every: float) -> Ticker | None:
    """A started ticker for a check item, or None when progress lines are off."""
    if every <= 0 or hasattr(item.config, "workerinput"):  # xdist workers have no terminal of their own
        return None
    key = (str(item.path), item.model["name"])

    def heartbeat() -> dict | None:
        worker = pool.workers.get(key)
        return getattr(worker, "last_progress", None)

    return Ticker(item.config, f"{item.model['name']}::{item.name}", every, heartbeat).start()
