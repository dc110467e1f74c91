"""A fork server: one process that has imported torch, forking the helper processes a check starts.

A check that starts processes of its own (the distributed check's ranks) pays for each an
interpreter start and ``import torch``, about a second and a quarter on the example's machine
(docs/design.md §6), and on two cores the ranks' start-ups run side by side with nothing else to
do. The fork server pays that once per session, before the check needs it: the pytest process
starts it while it collects (``Forkserver.start``), it imports torch and the modules a check
declares (``Check.preload``), held still while a timing item measures (``Forkserver.paused``),
then forks a child per request. A forked child is a fresh process in
every way that matters to a rank: its own session (``setsid``), its own standard streams (the log
file asked for), the environment, working directory, ``sys.path`` and ``sys.argv`` of the request,
and no thread of the server's (the server never starts one, runs no torch operation, and checks
at start that ``import torch`` left it single-threaded, the condition for a safe ``fork``;
libgomp's thread pool, which is not fork-safe, exists only after a parallel region has run).

What a child inherits that a fresh interpreter would not have: the modules already imported, and
the settings ``import torch`` read from the environment of the server (``OMP_NUM_THREADS``,
which the server takes as the requests give it, 1 unless set). A child therefore calls
``torch.set_num_threads`` with the request's value before anything else.

Protocol: a Unix socket in the session's scratch folder (``LLMCHECK_FORKSERVER`` in the
environment of every worker names it, ``LLMCHECK_FORKSERVER_PID`` the server; the socket exists
only once the server is ready, and a caller waits for a server that is still starting). One
request per connection, a JSON line ``{"module", "argv", "env", "cwd", "sys_path", "log", "exit"}``;
the answer is ``{"pid": N}``. The server reaps its children and writes each one's exit status
(``os.waitstatus_to_exitcode``: negative for a signal, as ``subprocess`` reports it) and when it
reaped it to the request's ``exit`` file; `Forked` reads it, so the caller watches a forked child as it would a
``subprocess.Popen``. The server exits when the process that started it is gone.

The parent side (`Forkserver`, `fork`, `Forked`) imports no torch.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "LLMCHECK_FORKSERVER"  # the socket's path, in the environment of every worker
ENV_PID = "LLMCHECK_FORKSERVER_PID"  # the server's pid: a caller waits for a server still starting
READY_TIMEOUT = 60.0  # seconds a caller waits for a server that is still starting
CONNECT_TIMEOUT = 10.0  # seconds a request may take (a fork takes milliseconds)
REAP = 0.05  # seconds between the server's looks for exited children and a gone parent
LOST = -9  # the exit status of a child whose status nobody recorded (its server died): as if killed


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie (exited, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# ---------------------------------------------------------------- the pytest process's side


class Forkserver:
    """The pytest process's handle on the session's fork server (started at most once)."""

    def __init__(self, folder: Path):
        self.path = folder / "forkserver.sock"
        self.proc: subprocess.Popen | None = None
        self.modules: tuple[str, ...] = ()

    def start(self, modules: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        """Start the server in the background, importing ``modules`` after torch."""
        if self.proc is not None or not modules:
            return
        self.modules = modules
        env = dict(env if env is not None else os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.setdefault("OMP_NUM_THREADS", "1")  # read at `import torch`; each child sets its request's
        with open(self.path.with_suffix(".log"), "wb") as log:  # why it refused, if it does
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmcheck.isolation.forkserver", str(self.path), str(os.getpid()), *modules],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                env=env,
            )

    @property
    def starting(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.path.exists()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Wait until the server is ready or gone; whether it is ready."""
        end = time.monotonic() + timeout
        while self.starting and time.monotonic() < end:
            time.sleep(0.02)
        return self.path.exists()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the server's start-up still (SIGSTOP) while a timing item measures: its imports must
        not run beside a measurement, and they go on (SIGCONT) beside the next ordinary item instead
        of delaying the timing one. A server that is ready is idle and left alone. Should the
        pytest process die meanwhile, the kernel kills the stopped server (its parent-death signal)."""
        held = self.starting
        if held:
            self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            if held and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
            self.proc.wait()
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------- the caller's side (a worker)


class Forked:
    """A child of the fork server, watched like a ``subprocess.Popen``: ``pid``, ``poll()``,
    ``wait(timeout)``, ``returncode``."""

    def __init__(self, pid: int, exit_path: Path):
        self.pid, self.exit_path, self.returncode = pid, exit_path, None
        self.exited_at: float | None = None  # time.time() when the server reaped it

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._status()
            if self.returncode is None and not _exists(self.pid):
                # reaped by someone else: the server is gone (its session ended) and init took the child
                time.sleep(REAP * 2)  # or the server reaped it and is writing the file now
                self.returncode = self._status()
                if self.returncode is None:
                    self.returncode = LOST
        return self.returncode

    def _status(self) -> int | None:
        try:
            code, at = self.exit_path.read_text().split()  # the file appears whole (renamed into place)
        except FileNotFoundError:
            return None
        self.exited_at = float(at)
        return int(code)

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


def _ready(path: str, server: int) -> bool:
    """Whether the server at ``path`` is ready, waiting while it is still starting (its start-up
    runs while pytest collects; the first item may need it before it is done)."""
    end = time.monotonic() + READY_TIMEOUT
    while not os.path.exists(path):
        if not server or not running(server) or time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def fork(
    module: str, argv: list[str], env: dict[str, str], cwd: str | None, log: Path, exit_path: Path
) -> Forked | None:
    """Run ``python -m module *argv`` as a child of the session's fork server; None when there is
    no server ready (the caller then starts the process itself)."""
    path = os.environ.get(ENV)
    if not path or not _ready(path, int(os.environ.get(ENV_PID, "0") or 0)):
        return None
    request = {
        "module": module,
        "argv": list(argv),
        "env": dict(env),
        "cwd": cwd or os.getcwd(),
        "sys_path": [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p],
        "log": str(log),
        "exit": str(exit_path),
    }
    exit_path.unlink(missing_ok=True)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CONNECT_TIMEOUT)
            s.connect(path)
            s.sendall(json.dumps(request).encode() + b"\n")
            answer = s.makefile("rb").readline()
    except OSError:
        return None  # the server is gone (its session ended, or it was stopped): start it directly
    try:
        return Forked(int(json.loads(answer)["pid"]), exit_path)
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- the server


def _no_death_signal() -> None:
    try:  # a fork clears it already (Linux); said here so that no child depends on that
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 0)
    except (OSError, AttributeError):
        pass


def _child(request: dict) -> None:
    """In the forked child: become the process the request describes and run its module."""
    import runpy
    import traceback

    code = 1
    try:
        os.setsid()
        _no_death_signal()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = [p for p in request["sys_path"] if p] + [p for p in sys.path if p not in request["sys_path"]]
        sys.argv = [request["module"], *request["argv"]]
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with_parent() -> None:
    """SIGKILL from the kernel when the process that started us dies, even while we are stopped
    (``paused``): Linux's PR_SET_PDEATHSIG; elsewhere the loop's look at the parent remains."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def serve(path: str, parent: int, modules: list[str]) -> None:
    import importlib
    import threading

    _die_with_parent()
    if os.getppid() != parent:  # it died before the signal was armed
        return
    import torch  # noqa: F401  (what every child would import first)

    for name in modules:
        importlib.import_module(name)
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        raise SystemExit(f"forkserver: importing {modules} started threads; forking would not be safe")
    # SIGCHLD wakes the loop (a byte on this pipe): each child is reaped, and its exit dated, at once
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    tmp = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    listener.listen(16)
    os.rename(tmp, path)  # the socket appears only once it is ready
    exits: dict[int, str] = {}
    try:
        while os.getppid() == parent:
            ready, _, _ = select.select([listener, wake_r], [], [], REAP)
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            if listener in ready:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(CONNECT_TIMEOUT)
                    try:
                        request = json.loads(conn.makefile("rb").readline())
                    except (OSError, ValueError):
                        continue
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        listener.close()
                        conn.close()
                        signal.set_wakeup_fd(-1)
                        os.close(wake_r)
                        os.close(wake_w)
                        _child(request)
                    exits[pid] = request["exit"]
                    try:
                        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                    except OSError:
                        pass
            _reap(exits)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _reap(exits: dict[int, str]) -> None:
    """Write each exited child's status to its request's exit file (whole, then renamed)."""
    while exits:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        where = exits.pop(pid, None)
        if where:
            tmp = f"{where}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.waitstatus_to_exitcode(status)} {time.time()}\n")
            os.replace(tmp, where)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
