"""The isolated worker process and the parent-side watchdog.

Model code is untrusted: it may hang (in Python or in native code), crash, leak, exhaust memory or
print without end. Each model's checks therefore run in a worker: a fresh interpreter (never a fork
of a process that imported torch) in its own process group, reused across that model's checks so
torch is imported once. Commands and results cross two pipes as JSON lines, never pickles.

The worker is started by a reaper (``llmcheck.isolation.reaper``), a small subreaper process that
every process the model starts stays below, daemons and ``setsid`` children included; when the
worker ends or is killed the reaper kills everything left. The worker's stdout and stderr go into a
pipe that a thread of this process drains into a bounded capture per check
(``llmcheck.isolation.output``).

While a check runs, the watchdog here waits for the answer and, between looks at the pipe, applies
``llmcheck.isolation.watchdog``'s rules: the tree's memory against ``memory_limit``, and hangs found
by missing progress rather than by the clock alone. On a hang or at the timeout it sends SIGUSR1,
on which ``faulthandler`` in the worker writes every thread's Python stack even while the main
thread is stuck in native code (docs/design.md §6), then kills the whole tree. A worker that dies
is reported with its signal and the fault trace that ``faulthandler`` wrote.
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

import psutil

from llmcheck.isolation import frames, output, reaper, stacks
from llmcheck.isolation.watchdog import Fired, History, Rules, Tree, Watch
from llmcheck.target.calls import Heartbeat, describe

REAPER = str(Path(reaper.__file__).resolve())
FAULT_READ = 256_000  # bytes of a fault file read back per check (head and tail)


class WorkerFailure(Exception):
    """The worker did not answer: it timed out, hung or died. Carries the evidence."""

    status = "error"

    def __init__(self, message: str, trace: str = "", output: str = "", metrics: dict | None = None):
        super().__init__(message)
        self.message, self.trace, self.output = message, trace, output
        self.metrics = metrics or {}


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


def _defaults() -> dict[str, Any]:
    from llmcheck.settings import GLOBAL_PARAMS

    return {k: p.default for k, p in GLOBAL_PARAMS.items()}


class WorkerProcess:
    """Parent-side handle of one worker process (and of the reaper it runs under)."""

    def __init__(self, log_dir: Path, startup_timeout: float, cwd: str | None = None, available: int | None = None):
        self.startup_timeout = startup_timeout
        self.available = available if available is not None else psutil.virtual_memory().available
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{os.getpid()}-{time.monotonic_ns()}"
        self.fault_path = log_dir / f"worker-{stamp}.fault"
        self.beat = Heartbeat(log_dir / f"worker-{stamp}.beat", create=True)
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        log_r, log_w = os.pipe()
        env = dict(os.environ)
        # The worker imports what this process imports: same sys.path (editable installs, pytester dirs).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["LLMCHECK_TMP"] = str(log_dir)  # the worker's scratch files go where the session cleans up
        env.setdefault("PYTHONFAULTHANDLER", "1")
        worker = [sys.executable, "-m", "llmcheck.isolation", str(cmd_r), str(out_w), str(self.fault_path)]
        self.proc = subprocess.Popen(  # the reaper (python -S: the standard library only, fast to start)
            [sys.executable, "-S", REAPER, str(out_w), str(cmd_r), "--", *worker, str(self.beat.path)],
            pass_fds=(cmd_r, out_w),
            stdin=subprocess.DEVNULL,
            stdout=log_w,
            stderr=log_w,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        for fd in (cmd_r, out_w, log_w):
            os.close(fd)
        self._cmd = cmd_w
        self._out = out_r
        self._buf = b""
        self.keeper = output.OutputKeeper(log_r)
        self.tree = Tree(self.proc.pid)
        self.worker_pid: int | None = None  # from the reaper's first line
        self.returncode: int | None = None  # the worker's, from the reaper's last line
        self.env: dict[str, Any] | None = None
        self.last_progress: dict[str, Any] | None = None
        self.last_progress_at = 0.0  # time.monotonic() of the last heartbeat
        self._fault_from = 0
        self._await_spawned(time.monotonic() + 30)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.returncode is None

    @property
    def pid(self) -> int:
        """The worker's pid (the reaper's when the worker never started)."""
        return self.worker_pid or self.proc.pid

    def _await_spawned(self, deadline: float) -> None:
        """Read the reaper's first line, the worker's pid (it comes within milliseconds)."""
        while b"\n" not in self._buf and time.monotonic() < deadline:
            ready, _, _ = select.select([self._out], [], [], 0.1)
            chunk = os.read(self._out, 1 << 16) if ready else None
            if chunk == b"" or (chunk is None and self.proc.poll() is not None):
                return  # the reaper failed: the first request reports it
            self._buf += chunk or b""
        line, _, rest = self._buf.partition(b"\n")
        if line.startswith(b'{"op": "spawned"'):
            self.worker_pid, self._buf = json.loads(line)["pid"], rest

    def _offsets(self) -> int:
        """Where this check's part of the fault file starts."""
        return _size(self.fault_path)

    def request(
        self,
        message: dict[str, Any],
        timeout: float,
        on_progress: Callable[[dict], None] | None = None,
        history: History | None = None,
    ) -> tuple[dict[str, Any], str]:
        """Send one command; return (reply, captured output) or raise a WorkerFailure."""
        self.keeper.mark()
        self._fault_from = self._offsets()
        settings = message.get("settings") or {}
        rules = Rules.of(settings, self.available, _defaults())
        if self.env is None:
            watch = Watch(rules, self.tree)  # memory only while torch and the model file import
            hello = self._receive(time.monotonic() + self.startup_timeout, None, "start-up (importing torch)", watch)
            self.env = hello.get("env", {})
        if "settings" in message:  # the memory check sizes its steps to the limit the watchdog enforces
            message = {**message, "settings": {**settings, "memory_limit_bytes": rules.memory_limit}}
        self.last_progress = None
        self.beat.reset()
        try:
            os.write(self._cmd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # a dead worker is diagnosed by _receive below
        history = history if history is not None else History()
        runs = message.get("op") == "run"
        watch = Watch(
            rules, self.tree, self.beat if runs else None, history, self._sample_stack, message.get("check", "")
        )
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, None, f"{message.get('op')} (timeout {timeout:g} s)", watch)
            if reply.get("op") != "progress":
                break
            self.last_progress, self.last_progress_at = reply, time.monotonic()
            if on_progress:
                on_progress(reply)
        if runs:
            history.learn(self.beat.read())
        self.kill_orphans()
        return reply, self.keeper.take()

    def _receive(self, deadline: float, offsets: Any = None, doing: str = "", watch: Watch | None = None) -> dict:
        """The worker's next message; the reaper's lines are handled here (``offsets``: unused, kept for callers)."""
        while True:
            while b"\n" not in self._buf:
                self._wait(deadline, doing, watch)
            line, _, self._buf = self._buf.partition(b"\n")
            msg = json.loads(line)
            if msg.get("op") == "spawned":
                self.worker_pid = msg["pid"]
            elif msg.get("op") == "exited":
                self.returncode = msg["returncode"]
                raise self._on_death(doing)
            else:
                return msg

    def _wait(self, deadline: float, doing: str, watch: Watch | None) -> None:
        """Read what the pipe has within 0.2 s, then apply the watchdog's rules; raise on a failure."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._on_hang(doing, watch, None)
        ready, _, _ = select.select([self._out], [], [], min(remaining, 0.2))
        chunk = os.read(self._out, 1 << 16) if ready else None
        if chunk:
            self._buf += chunk
        elif chunk == b"" or not self.alive:
            raise self._on_death(doing)
        fired = watch.poll() if watch is not None else None
        if fired is not None and fired.rule == "memory":
            raise self._on_memory(fired, doing)
        if fired is not None:
            raise self._on_hang(doing, watch, fired)

    def _sample_stack(self) -> str:
        """The worker's own stacks now (for the same-hang rule); later fault text starts after them."""
        dump = stacks.faulthandler_dump(self.pid, self.fault_path, 1.0)
        self._fault_from = self._offsets()
        return dump

    def _others(self) -> list[int]:
        """Processes below the reaper that are not the worker's descendants: orphans it adopted."""
        below = set(reaper.descendants(self.pid)) | {self.pid}
        return [p for p in reaper.descendants(self.proc.pid) if p not in below]

    def _on_hang(self, doing: str, watch: Watch | None, fired: Fired | None) -> WorkerTimeout:
        """A hang, by the clock (``fired`` None) or by a rule: stacks, a kill, and the evidence."""
        if fired is not None and fired.trace:  # the same hang as before: its stack is already taken
            trace, where, own = fired.trace, "", fired.metrics["fault"]["at"]
        else:
            sections = stacks.collect(self.pid, self.fault_path, others=self._others())
            trace = stacks.render(sections)
            where = stacks.stuck_at(sections) or culprit_frame(trace)
            mine = [s.text for s in sections if s.pid == self.pid and s.source == "faulthandler"]
            own = frames.user_frame(mine[0]) if mine else ""
        self.kill()
        headline = f"timed out during {doing}" if fired is None else fired.message
        message = headline + (f", stuck at {where}" if where else "") + self._last_progress_text(self.beat.read())
        fault = {"kind": "hang", "rule": "timeout"} if fired is None else dict(fired.metrics["fault"])
        fault["at"] = own or where.split("; ")[0]
        if watch is not None and own:  # later checks stuck in the same frame are this hang again
            watch.history.hangs.setdefault(own, watch.check or "an earlier check")
        trace = trace or "(the worker wrote no stacks before it was killed)"
        return WorkerTimeout(message, trace, self.keeper.take(), {"fault": fault})

    def _last_progress_text(self, beat: dict[str, int]) -> str:
        text = ""
        if self.last_progress:  # its age tells a slow step (recent heartbeat) from a stuck one
            text = (
                f"; last progress: {_progress_text(self.last_progress)} "
                f"({time.monotonic() - self.last_progress_at:.1f} s before the timeout)"
            )
        if beat.get("events"):
            text += f"; last model call: {describe(beat)}"
        return text

    def _on_memory(self, fired: Fired, doing: str) -> WorkerCrashed:
        self.kill()
        beat = self.beat.read()
        message = f"{fired.message}; killed during {doing}" + self._last_progress_text(beat)
        trace = "(the worker's process tree was killed for its memory; no stacks were taken, to free it at once)"
        return WorkerCrashed(message, trace, self.keeper.take(), fired.metrics)

    def _on_death(self, doing: str) -> WorkerCrashed:
        try:
            self.proc.wait(timeout=10)  # the reaper exits once the worker's tree is gone
        except subprocess.TimeoutExpired:  # pipe closed but process alive: treat as broken
            pass
        self.kill()
        if self.returncode is None:
            self._drain_reaper()
        if self.returncode is not None:
            who, returncode = "worker", self.returncode
        else:  # killed itself (by the model: os.kill(os.getppid(), ...)); the worker then ended its group
            who, returncode = "worker's reaper process", self.proc.returncode
        fault = output.read_span(self.fault_path, self._fault_from, FAULT_READ // 2, FAULT_READ // 2)
        where = culprit_frame(fault)
        message = f"{who} died with {describe_exit(returncode)} during {doing}" + (f" at {where}" if where else "")
        if not fault:
            fault = "(no fault trace: the process exited without a fatal signal, e.g. os._exit or SIGKILL)"
        metrics = {"fault": {"kind": "crash", "at": where, "exit": describe_exit(returncode)}}
        return WorkerCrashed(message, fault, self.keeper.take(), metrics)

    def _drain_reaper(self) -> None:
        """Read what is left on the pipe, for the reaper's ``exited`` line."""
        try:
            while select.select([self._out], [], [], 0)[0]:
                chunk = os.read(self._out, 1 << 16)
                if not chunk:
                    break
                self._buf += chunk
        except OSError:
            return
        for line in self._buf.split(b"\n"):
            if line.startswith(b'{"op": "exited"'):
                self.returncode = json.loads(line)["returncode"]
        self._buf = b""

    def kill_orphans(self) -> None:
        """Kill the processes the model left behind that nothing holds: those the reaper adopted
        (a double-forked daemon, a child whose parent exited). The worker's own children (a
        DataLoader's persistent workers) live until the worker ends."""
        for _ in range(20):
            others = self._others() if self.worker_pid is not None else []
            if not others:
                return
            for pid in others:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)

    def kill(self) -> None:
        """Kill the worker and everything below the reaper, and wait until none is left."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)  # the reaper empties its tree, then exits
                self.proc.wait(timeout=reaper.KILL_FOR + 2)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:  # the reaper itself is stuck: do it from here
            stacks.kill_tree(self.pid, stacks.descendants(self.proc.pid))
            self.proc.kill()
        elif self.worker_pid is not None and psutil.pid_exists(self.worker_pid):
            stacks.kill_tree(self.worker_pid, stacks.descendants(self.worker_pid))  # the reaper was killed
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
        self.keeper.close()
        self.beat.close()
        self.beat.path.unlink(missing_ok=True)
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


class WorkerPool:
    """One worker per model, reused across its checks; at most one alive at a time to bound memory."""

    def __init__(self, log_dir: Path, cwd: str | None = None):
        self.log_dir, self.cwd = log_dir, cwd
        self.available = psutil.virtual_memory().available  # memory_limit's fractions are of this
        self.workers: dict[tuple, WorkerProcess] = {}
        # Extra processes of the current model (llmcheck.isolation.processes), kept across its items so a
        # measurement spread over N processes costs N - 1 start-ups per model, not per item.
        self.spares: dict[tuple, WorkerProcess] = {}
        self.histories: dict[tuple, History] = {}  # per model: its step time and known hangs
        self.env: dict[str, Any] | None = None

    def _start(self, startup_timeout: float) -> WorkerProcess:
        return WorkerProcess(self.log_dir, startup_timeout, self.cwd, self.available)

    def get(self, key: tuple, startup_timeout: float) -> WorkerProcess:
        worker = self.workers.get(key)
        if worker is not None and worker.alive:
            return worker
        self._close_others(key)
        for other in list(self.workers):
            self.workers.pop(other).close()
        worker = self.workers[key] = self._start(startup_timeout)
        return worker

    def spare(self, key: tuple, index: int, startup_timeout: float) -> WorkerProcess:
        """Extra process ``index`` (2, 3, ...) of model ``key``: alive until the pool moves on to
        another model, or until a check in it fails (the caller then closes it)."""
        self._close_others(key)
        worker = self.spares.get((*key, index))
        if worker is None or not worker.alive:
            worker = self.spares[(*key, index)] = self._start(startup_timeout)
        return worker

    def retire_spare(self, key: tuple, index: int) -> None:
        worker = self.spares.pop((*key, index), None)
        if worker is not None:
            worker.close()

    def _close_others(self, key: tuple) -> None:
        for other in [k for k in self.spares if k[: len(key)] != key]:
            self.spares.pop(other).close()

    def history(self, key: tuple) -> History:
        return self.histories.setdefault(key, History())

    def request(
        self, key: tuple, message: dict, timeout: float, startup_timeout: float, on_progress=None
    ) -> tuple[dict, str]:
        worker = self.get(key, startup_timeout)
        try:
            reply, output_text = worker.request(message, timeout, on_progress, self.history(key))
            if reply.get("retire"):  # e.g. after a CUDA out-of-memory error: start the next check fresh
                worker.close()
            return reply, output_text
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
