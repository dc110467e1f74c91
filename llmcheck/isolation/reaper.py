"""The reaper: a small process between the pytest process and a worker, the ancestor of everything
the model starts. Linux only (``prctl``); stdlib only, run as a script so it starts in milliseconds.

``python -S reaper.py OUT_FD CMD_FD -- WORKER_ARGV...`` sets ``PR_SET_CHILD_SUBREAPER`` on itself
and starts the worker, in a session of its own, passing it the two pipes. A process that leaves
the worker's tree (``setsid``, a double-forked daemon, a child whose parent exited) is reparented
to the reaper instead of to init, so the reaper's descendants are exactly what the worker started,
and nothing else: never the pytest process's other children (pytester, xdist, fixtures), which the
pytest process itself could not tell apart had it become the subreaper.

The reaper reaps every child it adopts. When the worker exits or is killed, it SIGKILLs all that is
left below it (repeatedly: each kill reparents the victim's children to the reaper), writes
``{"op": "exited", "returncode": N}`` to OUT_FD and exits. On SIGTERM from the parent it does the
same at once; if the pytest process dies, it notices within half a second and does the same.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
WAKE = 0.5  # seconds between looks at the parent when no signal arrives
KILL_FOR = 5.0  # seconds the reaper tries to empty its tree (a process in D state may take a while)
WAITED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def set_subreaper() -> bool:
    """Make orphans below this process its children (Linux >= 3.4); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` from ``/proc/PID/task/*/children`` (each thread's own forks);
    [] when it is gone."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), zombies included."""
    found, i = children(pid), 0
    while i < len(found):
        found.extend(children(found[i]))
        i += 1
    return found


def reap() -> dict[int, int]:
    """Wait for every child that has ended: {pid: return code (negative: the signal)}."""
    ended = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended[pid] = os.waitstatus_to_exitcode(status)


def empty_tree(deadline: float) -> dict[int, int]:
    """SIGKILL everything below this process until nothing is left (or ``deadline``)."""
    ended = reap()
    while time.monotonic() < deadline:
        below = descendants(os.getpid())
        if not below:
            break
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
        ended.update(reap())
    return ended


def main(argv: list[str]) -> int:
    import faulthandler

    faulthandler.disable()  # PYTHONFAULTHANDLER is meant for the worker, not for this process
    out_fd, cmd_fd = int(argv[0]), int(argv[1])
    worker_argv = argv[argv.index("--") + 1 :]
    parent = os.getppid()
    subreaper = set_subreaper()
    # Blocked before the worker starts (it gets an empty mask), so no SIGCHLD can be missed.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    worker = os.posix_spawn(worker_argv[0], worker_argv, os.environ, setsid=True, setsigmask=())
    os.close(cmd_fd)  # the worker holds the pipes now; the parent sees EOF when it dies
    out = os.fdopen(out_fd, "w")
    out.write(json.dumps({"op": "spawned", "pid": worker, "subreaper": subreaper}) + "\n")
    out.flush()
    returncode = None
    while True:
        ended = reap()
        if worker in ended:
            returncode = ended[worker]
            break
        if os.getppid() != parent:  # the pytest process is gone: nobody will ask for the result
            break
        got = signal.sigtimedwait(WAITED, WAKE)
        if got is not None and got.si_signo != signal.SIGCHLD:
            break  # SIGTERM from the parent: kill the tree now
    ended = empty_tree(time.monotonic() + KILL_FOR)
    if returncode is None:
        returncode = ended.get(worker, -signal.SIGKILL)
    try:
        out.write(json.dumps({"op": "exited", "returncode": returncode}) + "\n")
        out.flush()
    except OSError:
        pass  # the parent closed its end: it is not waiting for this
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
