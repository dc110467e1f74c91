"""Evidence from a stuck worker's process tree: every process's stacks, then a kill that leaves
no process behind. Parent side (no torch).

The worker registers ``faulthandler`` on SIGUSR1 (``llmcheck.isolation.child``). Processes it forks, such
as DataLoader workers, inherit that handler and the open fault file, so they dump their Python
stacks on the same signal. Each process is signalled in turn, after checking in
``/proc/PID/status`` that it catches SIGUSR1 (whose default action would kill it), so the dumps do
not interleave; the file grows by one dump at a time and each dump is read back from its offset.
When ``py-spy`` is on PATH (the ``faults`` extra), ``py-spy dump --native`` adds C/C++ frames.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from llmcheck.isolation import frames
from llmcheck.isolation.output import read_span

PYSPY_TIMEOUT = 5.0  # seconds for all dumps together; --native unwinding can be slow on large processes


@dataclass(frozen=True)
class Section:
    """One process's stacks: who it is, and what wrote the text (faulthandler or py-spy)."""

    pid: int
    role: str
    source: str
    text: str

    def render(self) -> str:
        return f"--- {self.role} pid {self.pid} ({self.source}) ---\n{self.text.rstrip()}\n"


def descendants(pid: int) -> list[psutil.Process]:
    """The worker's children, grandchildren and so on (empty when it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def catches_sigusr1(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGUSR1 (bit 10 of SigCgt), so signalling it cannot kill it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = re.search(r"^SigCgt:\s*([0-9a-fA-F]+)", status, re.M)
    return bool(mask) and bool(int(mask.group(1), 16) & (1 << (signal.SIGUSR1 - 1)))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


DUMP_LIMIT = 200_000  # bytes of one process's dump read back: faulthandler's own caps keep real dumps far below


def faulthandler_dump(pid: int, fault_path: Path, wait: float) -> str:
    """Signal ``pid`` and return what its faulthandler appended to ``fault_path``."""
    before = _size(fault_path)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return ""
    end, last = time.monotonic() + wait, before
    while time.monotonic() < end:
        time.sleep(0.05)
        size = _size(fault_path)
        if size > before and size == last:  # grown, then stable for one poll
            break
        last = size
    return read_span(fault_path, before, DUMP_LIMIT // 2, DUMP_LIMIT // 2) if _size(fault_path) > before else ""


def pyspy_dumps(pids: list[int]) -> dict[int, str]:
    """``py-spy dump --native`` of each pid, run side by side under one deadline; {} when py-spy
    is not on PATH. A dump that fails says why (e.g. ptrace not permitted in a container)."""
    exe = shutil.which("py-spy")
    if exe is None:
        return {}
    running = {}
    for pid in pids:
        try:
            running[pid] = subprocess.Popen(
                [exe, "dump", "--native", "--pid", str(pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            return {pid: f"(py-spy failed: {exc})" for pid in pids}
    end, out = time.monotonic() + PYSPY_TIMEOUT, {}
    for pid, proc in running.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, end - time.monotonic()))
            out[pid] = stdout if proc.returncode == 0 else f"(py-spy could not attach: {stderr.strip()[:300]})"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[pid] = f"(py-spy gave no dump within {PYSPY_TIMEOUT:g} s)"
    return out


def _role(pid: int, root: int, text: str) -> str:
    if pid == root:
        return "worker"
    if "torch/utils/data/_utils/worker.py" in text or "_worker_loop" in text:
        return "DataLoader worker"
    return "child process"


def collect(pid: int, fault_path: Path, wait: float = 2.0, others: list[int] = ()) -> list[Section]:
    """Stacks of ``pid``, its descendants and ``others`` (processes that left its tree, adopted by
    the reaper): faulthandler first (Python frames of every thread), then py-spy's native stacks
    when it is installed."""
    sections: list[Section] = []
    children = [p.pid for p in descendants(pid)] + [p for p in others if p != pid]
    for target in [pid, *children]:
        if target != pid and not catches_sigusr1(target):
            sections.append(
                Section(
                    target,
                    "child process",
                    "no faulthandler",
                    "(this process does not handle SIGUSR1; install py-spy for its stack)",
                )
            )
            continue
        text = faulthandler_dump(target, fault_path, wait if target == pid else min(wait, 1.0))
        if text:
            sections.append(Section(target, _role(target, pid, text), "faulthandler", text))
    for target, text in pyspy_dumps([pid, *children]).items():
        sections.append(Section(target, "worker" if target == pid else "child process", "py-spy dump --native", text))
    return sections


def render(sections: list[Section]) -> str:
    return "\n".join(s.render() for s in sections)


def stuck_at(sections: list[Section]) -> str:
    """Where the tree is stuck: the worker's own frame, plus the frame of every child that is
    stuck in user code (a DataLoader worker in ``__getitem__``), each named by role and pid."""
    found = []
    for s in sections:
        if s.source == "faulthandler":
            where = frames.user_frame(s.text)
            if where:
                found.append(where if s.role == "worker" else f"{where} ({s.role} pid {s.pid})")
    return "; ".join(found)


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead; waiting for a parent to reap it
    except psutil.Error:
        return True


def kill_tree(pid: int, known: list[psutil.Process], timeout: float = 5.0) -> list[int]:
    """SIGKILL the process group of ``pid`` and every process in ``known`` (descendants listed
    before the kill, so those that left the group with setsid are found too); wait until each is
    gone. Returns the pids still alive after ``timeout`` (none, unless the kernel is stuck)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in known:
        try:
            proc.kill()
        except psutil.Error:
            pass
    end = time.monotonic() + timeout
    alive = [p for p in known if not _gone(p)]
    while alive and time.monotonic() < end:
        time.sleep(0.02)
        alive = [p for p in alive if not _gone(p)]
    return [p.pid for p in alive]
