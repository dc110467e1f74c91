"""The watchdog's rules besides the clock, checked by the parent while a worker runs a check.
Parent side, torch-free.

- **memory**: the resident memory of the worker's whole tree (its children and the orphans the
  reaper adopted included) over ``memory_limit`` ends the check as ``crashed``, before the
  kernel's OOM killer picks a victim, which may be the pytest process or the CI runner.
- **progress**: a hang is declared when the model is being called (a forward has started and not
  returned, or a backward has begun) and no progress (a forward starting or returning, a backward,
  a ``ctx.progress``; see ``llmcheck.target.calls``) has come for ``hang_factor`` times the step
  time learned so far (the longest gap between two events of the check, else the median of the
  model's earlier checks), at least ``hang_floor_s``, *and* the tree has been quiet over the last
  ``hang_floor_s``: under a tenth of a core and under 1 MB/s of reads and writes. A deadlock, a
  lost wake-up or a collective waiting for a dead peer is quiet; a slow step computes, so a big
  batch is never cut for being slow. Outside the model's calls (a factory loading weights from a
  slow disk, a check waiting for a fresh process) only the clock applies: the check's
  ``timeout`` stays the outer bound everywhere.
- **same hang**: once a hang's stuck frame is known for a model, a later check of that model that
  has been quiet, with no progress, for ``SAME_AFTER`` seconds has its worker's stack sampled;
  stuck in the same frame, it is reported as that same hang at once.

The CPU, memory and I/O of the tree come from ``/proc`` (one ``stat`` and one ``io`` read per
process, about a millisecond per poll for a worker and a few children).
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmcheck.isolation import frames
from llmcheck.isolation.reaper import descendants
from llmcheck.target.calls import KINDS, Heartbeat

POLL = 0.2  # seconds between looks at the tree
QUIET_CPU = 0.1  # cores: a tree using less is waiting, not computing
QUIET_IO = 1e6  # bytes per second read and written (files, pipes, sockets): less is no I/O to speak of
SAME_AFTER = 3.0  # seconds without progress before a quiet check's stack is compared with known hangs
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def limit_bytes(setting: float, available: int) -> int | None:
    """``memory_limit`` in bytes: a fraction (<= 1) of ``available``, bytes above 1, None for 0."""
    if setting <= 0:
        return None
    return int(setting * available) if setting <= 1 else int(setting)


@dataclass
class Sample:
    at: float  # time.monotonic()
    rss: int  # bytes, summed over the tree
    cpu: float  # seconds of CPU, summed over the tree (reaped children included)
    io: int  # bytes read and written, summed over the tree
    pids: list[int]


def _proc(pid: int) -> tuple[int, float, int]:
    """(RSS bytes, CPU seconds, I/O bytes) of one process; zeros when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0, 0.0, 0
    # Fields after the name, from state (3): utime 14, stime 15, cutime 16, cstime 17, rss 24.
    cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
    rss = int(fields[21]) * PAGE
    io = 0
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith((b"rchar:", b"wchar:")):
                    io += int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, cpu, io


class Tree:
    """Samples of everything below the reaper: its RSS, CPU time and I/O, kept for a while."""

    def __init__(self, root: int, keep_s: float = 60.0):
        self.root, self.keep_s = root, keep_s
        self.samples: deque[Sample] = deque()

    def sample(self) -> Sample:
        pids = descendants(self.root)
        rss = cpu = io = 0
        for pid in pids:
            r, c, i = _proc(pid)
            rss, cpu, io = rss + r, cpu + c, io + i
        s = Sample(time.monotonic(), rss, cpu, io, pids)
        self.samples.append(s)
        while self.samples and s.at - self.samples[0].at > self.keep_s:
            self.samples.popleft()
        return s

    def quiet(self, span: float) -> bool:
        """Whether the tree used under QUIET_CPU cores and QUIET_IO bytes/s over the last ``span``
        seconds (False until samples cover that long, or when a process left and took its counts)."""
        if not self.samples:
            return False
        last = self.samples[-1]
        old = next((s for s in reversed(self.samples) if last.at - s.at >= span), None)
        if old is None:
            return False
        took = last.at - old.at
        cpu, io = last.cpu - old.cpu, last.io - old.io
        return 0 <= cpu < QUIET_CPU * took and 0 <= io < QUIET_IO * took


@dataclass
class History:
    """What the watchdog learned about one model across its checks (and its workers)."""

    steps: list[float] = field(default_factory=list)  # each finished check's step time, seconds
    hangs: dict[str, str] = field(default_factory=dict)  # stuck frame -> the check it was first seen in

    def step(self) -> float | None:
        return statistics.median(self.steps) if self.steps else None

    def learn(self, beat: dict[str, int]) -> None:
        if beat.get("events", 0) >= 2:
            self.steps.append(beat["step_ns"] / 1e9)


@dataclass
class Fired:
    """A rule ended the check: which, the headline of the message, the numbers, and any stack
    already taken (the worker adds where it was stuck and its last progress)."""

    rule: str
    message: str
    metrics: dict[str, Any]
    trace: str = ""


@dataclass
class Rules:
    memory_limit: int | None  # bytes
    memory_setting: float
    hang_factor: float
    hang_floor_s: float

    @classmethod
    def of(cls, settings: dict[str, Any], available: int, defaults: dict[str, Any]) -> Rules:
        get = {**defaults, **{k: v for k, v in settings.items() if v is not None}}
        setting = float(get["memory_limit"])
        return cls(limit_bytes(setting, available), setting, float(get["hang_factor"]), float(get["hang_floor_s"]))


class Watch:
    """One check's watchdog rules besides the clock. ``poll()`` returns a `Fired` or None."""

    def __init__(
        self,
        rules: Rules,
        tree: Tree,
        beat: Heartbeat | None = None,
        history: History | None = None,
        sample_stack: Callable[[], str] | None = None,
        check: str = "",
    ):
        self.rules, self.tree, self.beat, self.check = rules, tree, beat, check
        self.history = history if history is not None else History()
        self.sample_stack = sample_stack
        self.peak = 0
        self.next_poll = 0.0
        self.next_sample = 0.0
        self.sample_every = SAME_AFTER

    def poll(self) -> Fired | None:
        now = time.monotonic()
        if now < self.next_poll:
            return None
        self.next_poll = now + POLL
        s = self.tree.sample()
        self.peak = max(self.peak, s.rss)
        limit = self.rules.memory_limit
        if limit and s.rss > limit:
            return self._out_of_memory(s.rss, limit)
        if self.beat is None or self.rules.hang_factor <= 0:
            return None
        beat = self.beat.read()
        idle = (time.monotonic_ns() - beat["last_ns"]) / 1e9
        return self._same_hang(beat, idle, now) or self._progress(beat, idle)

    def _out_of_memory(self, rss: int, limit: int) -> Fired:
        setting = self.rules.memory_setting
        source = f"memory_limit = {setting:g}" + (" of the memory available at the start" if setting <= 1 else " bytes")
        message = f"out of memory: RSS {mib(rss)} > limit {mib(limit)} ({source}); peak {mib(self.peak)}"
        metrics = {"kind": "out_of_memory", "rss_bytes": rss, "limit_bytes": limit, "peak_bytes": self.peak}
        return Fired("memory", message, {"fault": metrics})

    def step(self, beat: dict[str, int]) -> float | None:
        return beat["step_ns"] / 1e9 if beat["events"] >= 2 else self.history.step()

    def _progress(self, beat: dict[str, int], idle: float) -> Fired | None:
        factor, floor = self.rules.hang_factor, self.rules.hang_floor_s
        if beat["depth"] <= 0 and beat["last_kind"] != KINDS.index("backward"):
            return None  # not in the model's code: only the timeout
        step = self.step(beat)
        window = max(floor, factor * (step or 0.0))
        if idle <= window or not self.tree.quiet(min(window, floor)):
            return None
        if step is None:
            why = f"(hang_floor_s; no step time learned yet, {factor:g}x a step when there is one)"
        elif factor * step >= floor:
            why = f"= {factor:g}x the step time {step:.3g} s (hang_factor)"
        else:
            why = f"(hang_floor_s; {factor:g}x the step time {step:.3g} s is less)"
        message = f"hang: no progress for {idle:.1f} s {why} while the worker's processes were idle"
        metrics = {
            "kind": "hang",
            "rule": "progress",
            "idle_s": round(idle, 3),
            "step_s": step,
            "window_s": window,
            "hang_factor": factor,
            "hang_floor_s": floor,
        }
        return Fired("progress", message, {"fault": metrics})

    def _same_hang(self, beat: dict[str, int], idle: float, now: float) -> Fired | None:
        after = min(SAME_AFTER, self.rules.hang_floor_s)
        if not self.history.hangs or self.sample_stack is None or idle <= after or now < self.next_sample:
            return None
        if not self.tree.quiet(after):
            return None
        dump = self.sample_stack()
        where = frames.user_frame(dump)
        if where not in self.history.hangs:
            self.next_sample, self.sample_every = now + self.sample_every, self.sample_every * 2
            return None
        first = self.history.hangs[where]
        message = (
            f"hang: the same hang as in {first}: stuck at {where} after {idle:.1f} s without progress "
            "while the worker's processes were idle"
        )
        metrics = {"kind": "hang", "rule": "same_hang", "at": where, "same_as": first, "idle_s": round(idle, 3)}
        return Fired("same_hang", message, {"fault": metrics}, dump)
