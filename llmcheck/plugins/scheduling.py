"""Under pytest-xdist, checks whose numbers are timings run alone.

``pytest -n 4 --llmcheck models/`` runs four items at once. That is fine for a causal-mask or
checkpoint check, but a latency measured while three other workers train models on the same cores
is a measurement of the load, not of the model. So every llmcheck item holds a slot of one
machine-wide readers-writer lock for as long as it runs: ordinary checks share it, checks declared
``timing=True`` (latency, throughput, amp, compression, coldstart, input-pipeline) take it alone.
The lock prefers writers, so a timing check waits for the items already running to end, not for
the queue of every other worker to drain.

Ordinary items also get their share of the cores: under ``-n N`` each runs its check with torch's
threads set to cores // N (unless OMP_NUM_THREADS is set), since N workers each with one thread per
core oversubscribe them, and torch's spin-waiting thread pools then make small ops a hundred times
slower (a tiny LSTM's forward 0.85 s instead of ~1 ms, two sessions on two cores), which the checks'
budgets read as the model's cost. A timing item, alone on the machine, keeps torch's own setting.

The lock is two ``fcntl.flock`` files in a folder the controller makes for the run and hands to
every worker (``pytest_configure_node``): ``gate`` orders the arrivals, ``room`` is shared by
ordinary items and exclusive to a timing one. ``flock`` locks belong to an open file and go away
with the process, so a crashed
worker never leaves the run locked. Outside xdist nothing is locked; the slot still records when
the item ran and how long it waited, which the report keeps under ``scheduling``.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

WORKERINPUT_KEY = "llmcheck_slots"  # the folder of the lock files, in each xdist worker's workerinput
SCHEDULING_KEY = pytest.StashKey[dict]()  # on an item: when it ran, on which xdist worker, how long it waited


class Slots:
    """The run's lock files (none outside xdist) and this process's xdist worker id."""

    def __init__(self, config: pytest.Config):
        workerinput = getattr(config, "workerinput", None)
        self.worker = workerinput.get("workerid") if workerinput else None
        self.workers = int(workerinput.get("workercount", 1)) if workerinput else 1
        self.base: Path | None = None
        if workerinput and workerinput.get(WORKERINPUT_KEY) and self.workers > 1:
            self.base = Path(workerinput[WORKERINPUT_KEY]) / "slot"

    def threads(self, exclusive: bool) -> int | None:
        """torch's threads for one item's check: an ordinary item's share of the cores under
        pytest-xdist; None (torch's own setting) outside xdist, for a timing item, or when the
        user set OMP_NUM_THREADS."""
        if self.base is None or exclusive or os.environ.get("OMP_NUM_THREADS"):
            return None
        return max(1, len(os.sched_getaffinity(0)) // self.workers)

    @contextmanager
    def hold(self, exclusive: bool) -> Iterator[dict[str, Any]]:
        """Hold a slot for one item; yields the item's ``scheduling`` record, filled in on exit
        (``share``: the torch threads asked for its check, see ``threads``)."""
        asked = time.time()
        info: dict[str, Any] = {"worker": self.worker, "workers": self.workers, "exclusive": exclusive}
        info["share"] = self.threads(exclusive)
        if self.base is None:
            info.update(started=asked, waited_s=0.0)
            try:
                yield info
            finally:
                info["ended"] = time.time()
            return
        with _opened(self.base, "gate") as gate, _opened(self.base, "room") as room:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(room, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            info["started"] = time.time()
            info["waited_s"] = round(info["started"] - asked, 3)
            try:
                yield info
            finally:
                info["ended"] = time.time()
                fcntl.flock(room, fcntl.LOCK_UN)


@contextmanager
def _opened(base: Path, name: str) -> Iterator[int]:
    fd = os.open(f"{base}.{name}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


def overlapping(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of item ids whose run times overlapped while one of them was a timing check: empty
    when the scheduling held (used by tests and available to anyone auditing a report)."""
    spans = [(r["id"], r["scheduling"]) for r in records if r.get("scheduling", {}).get("started")]
    found = []
    for i, (a, sa) in enumerate(spans):
        for b, sb in spans[i + 1 :]:
            if (sa["exclusive"] or sb["exclusive"]) and sa["started"] < sb["ended"] and sb["started"] < sa["ended"]:
                found.append((a, b))
    return found
