"""The isolated worker process and the parent-side watchdog.

Model code is untrusted: it may hang (in Python or in native code), crash, leak or exhaust memory.
Each model's checks therefore run in a worker: a fresh interpreter (never a fork of a process that
imported torch) in its own process group, reused across that model's checks so torch is imported
once. Commands and results cross two pipes as JSON lines, never pickles; the worker's stdout and
stderr go to a log the parent reads back as the check's captured output.

On timeout the parent sends SIGUSR1, on which ``faulthandler`` in the worker writes every thread's
Python stack even while the main thread is stuck in native code (docs/design.md §6), then kills the
whole process group, DataLoader workers included. A worker that dies is reported with its signal
and the fault trace that ``faulthandler`` wrote.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmcheck.isolation import frames, stacks

OUTPUT_LIMIT = 20_000


class WorkerFailure(Exception):
    """The worker did not answer: it timed out or died. Carries the evidence."""

    status = "error"

    def __init__(self, message: str, trace: str = "", output: str = ""):
        super().__init__(message)
        self.message, self.trace, self.output = message, trace, output


class WorkerTimeout(WorkerFailure):
    status = "timeout"


class WorkerCrashed(WorkerFailure):
    status = "crashed"


def culprit_frame(trace: str) -> str:
    """``file:line in func`` of the innermost frame of the first thread in a faulthandler dump,
    preferring frames outside llmcheck, the standard library and site-packages."""
    return frames.user_frame(trace, fallback=True)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class WorkerProcess:
    """Parent-side handle of one worker process."""

    def __init__(self, log_dir: Path, startup_timeout: float, cwd: str | None = None):
        self.startup_timeout = startup_timeout
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{os.getpid()}-{time.monotonic_ns()}"
        self.log_path = log_dir / f"worker-{stamp}.log"
        self.fault_path = log_dir / f"worker-{stamp}.fault"
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        env = dict(os.environ)
        # The worker imports what this process imports: same sys.path (editable installs, pytester dirs).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["LLMCHECK_TMP"] = str(log_dir)  # the worker's scratch files go where the session cleans up
        env.setdefault("PYTHONFAULTHANDLER", "1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmcheck.isolation", str(cmd_r), str(out_w), str(self.fault_path)],
                pass_fds=(cmd_r, out_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        os.close(cmd_r)
        os.close(out_w)
        self._cmd = cmd_w
        self._out = out_r
        self._buf = b""
        self.env: dict[str, Any] | None = None
        self.last_progress: dict[str, Any] | None = None
        self.last_progress_at = 0.0  # time.monotonic() of the last heartbeat

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _offsets(self) -> tuple[int, int]:
        return _size(self.log_path), _size(self.fault_path)

    def _since(self, offsets: tuple[int, int]) -> tuple[str, str]:
        return _tail(self.log_path, offsets[0]), _tail(self.fault_path, offsets[1])

    def request(
        self, message: dict[str, Any], timeout: float, on_progress: Callable[[dict], None] | None = None
    ) -> tuple[dict[str, Any], str]:
        """Send one command; return (reply, captured output) or raise a WorkerFailure."""
        offsets = self._offsets()
        if self.env is None:
            hello = self._receive(time.monotonic() + self.startup_timeout, offsets, "start-up (importing torch)")
            self.env = hello.get("env", {})
            offsets = self._offsets()
        self.last_progress = None
        try:
            os.write(self._cmd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # a dead worker is diagnosed by _receive below
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, offsets, f"{message.get('op')} (timeout {timeout:g} s)")
            if reply.get("op") != "progress":
                return reply, self._since(offsets)[0]
            self.last_progress, self.last_progress_at = reply, time.monotonic()
            if on_progress:
                on_progress(reply)

    def _receive(self, deadline: float, offsets: tuple[int, int], doing: str) -> dict[str, Any]:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._on_timeout(offsets, doing)
            ready, _, _ = select.select([self._out], [], [], min(remaining, 0.2))
            chunk = os.read(self._out, 1 << 16) if ready else None
            if chunk:
                self._buf += chunk
            elif chunk == b"" or not self.alive:
                raise self._on_death(offsets, doing)
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _on_timeout(self, offsets, doing: str) -> WorkerTimeout:
        sections = stacks.collect(self.proc.pid, self.fault_path)
        self.kill()
        output, _ = self._since(offsets)
        trace = stacks.render(sections)
        where = stacks.stuck_at(sections) or culprit_frame(trace)
        progress = ""
        if self.last_progress:  # its age tells a slow step (recent heartbeat) from a stuck one
            progress = (
                f"; last progress: {_progress_text(self.last_progress)} "
                f"({time.monotonic() - self.last_progress_at:.1f} s before the timeout)"
            )
        message = f"timed out during {doing}" + (f", stuck at {where}" if where else "") + progress
        return WorkerTimeout(message, trace or "(the worker wrote no stacks before it was killed)", output)

    def _on_death(self, offsets, doing: str) -> WorkerCrashed:
        try:
            returncode = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pipe closed but process alive: treat as broken
            self.kill()
            returncode = self.proc.returncode
        self.kill()  # leftover children of the group
        output, fault = self._since(offsets)
        where = culprit_frame(fault)
        message = f"worker died with {describe_exit(returncode)} during {doing}" + (f" at {where}" if where else "")
        if not fault:
            fault = "(no fault trace: the process exited without a fatal signal, e.g. os._exit or SIGKILL)"
        return WorkerCrashed(message, fault, output)

    def kill(self) -> None:
        """Kill the worker's whole process group (its DataLoader workers and other children too,
        including any that left the group), and wait until none is left."""
        stacks.kill_tree(self.proc.pid, stacks.descendants(self.proc.pid))
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        if self.alive:
            try:
                os.write(self._cmd, b'{"op": "stop"}\n')
                self.proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for fd in (self._cmd, self._out):
            try:
                os.close(fd)
            except OSError:
                pass


def run_message(
    file: str, model: str, check: str, params: dict[str, Any], settings: dict[str, Any], variant: dict[str, Any] | None
) -> dict[str, Any]:
    """The command that runs one check on one model in a worker (see ``child.ChildLoop.run``)."""
    return {
        "op": "run",
        "file": file,
        "model": model,
        "check": check,
        "params": dict(params),
        "settings": dict(settings),
        "variant": variant,
    }


def _progress_text(progress: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in progress.items() if k != "op")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    return text if len(text) <= OUTPUT_LIMIT else "[... truncated ...]\n" + text[-OUTPUT_LIMIT:]


class WorkerPool:
    """One worker per model, reused across its checks; at most one alive at a time to bound memory."""

    def __init__(self, log_dir: Path, cwd: str | None = None):
        self.log_dir, self.cwd = log_dir, cwd
        self.workers: dict[tuple, WorkerProcess] = {}
        # Extra processes of the current model (llmcheck.isolation.processes), kept across its items so a
        # measurement spread over N processes costs N - 1 start-ups per model, not per item.
        self.spares: dict[tuple, WorkerProcess] = {}
        self.env: dict[str, Any] | None = None

    def get(self, key: tuple, startup_timeout: float) -> WorkerProcess:
        worker = self.workers.get(key)
        if worker is not None and worker.alive:
            return worker
        self._close_others(key)
        for other in list(self.workers):
            self.workers.pop(other).close()
        worker = self.workers[key] = WorkerProcess(self.log_dir, startup_timeout, self.cwd)
        return worker

    def spare(self, key: tuple, index: int, startup_timeout: float) -> WorkerProcess:
        """Extra process ``index`` (2, 3, ...) of model ``key``: alive until the pool moves on to
        another model, or until a check in it fails (the caller then closes it)."""
        self._close_others(key)
        worker = self.spares.get((*key, index))
        if worker is None or not worker.alive:
            worker = self.spares[(*key, index)] = WorkerProcess(self.log_dir, startup_timeout, self.cwd)
        return worker

    def retire_spare(self, key: tuple, index: int) -> None:
        worker = self.spares.pop((*key, index), None)
        if worker is not None:
            worker.close()

    def _close_others(self, key: tuple) -> None:
        for other in [k for k in self.spares if k[: len(key)] != key]:
            self.spares.pop(other).close()

    def request(
        self, key: tuple, message: dict, timeout: float, startup_timeout: float, on_progress=None
    ) -> tuple[dict, str]:
        worker = self.get(key, startup_timeout)
        try:
            reply, output = worker.request(message, timeout, on_progress)
            if reply.get("retire"):  # e.g. after a CUDA out-of-memory error: start the next check fresh
                worker.close()
            return reply, output
        finally:
            self.env = self.env or worker.env
            if not worker.alive:
                self.workers.pop(key, None)
                worker.close()

    def adopt(self, old: tuple, new: tuple) -> None:
        """Hand a worker that already imported a file (the describe worker) to a model's checks."""
        if old in self.workers:
            self.workers[new] = self.workers.pop(old)

    def close(self) -> None:
        for worker in [*self.workers.values(), *self.spares.values()]:
            worker.close()
        self.workers.clear()
        self.spares.clear()
