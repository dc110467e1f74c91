"""The model's calls, counted for the watchdog: each forward's start and end, each backward's start
and each ``ctx.progress``. Torch-free: the parent process reads the same block.

`Target` reports its calls to ``target.calls``, a no-op `Calls` outside a worker. In a worker it is
a `Heartbeat`: a small file both processes map into memory. The worker writes a few integers per
call, no message and no system call (about a microsecond, against a forward of a millisecond or
more); the parent's watchdog reads the block as often as it likes and so sees progress, the
model's step time (the longest gap between two events of the check) and whether a forward is
running, without waking the worker (``llmcheck.isolation.watchdog``).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path
from typing import Any

FIELDS = (
    "version",
    "events",  # forward starts and ends, backward starts and progress calls since the check began
    "last_ns",  # time.monotonic_ns() of the last event (of the check's start before the first)
    "forwards",  # forwards started
    "backwards",  # backwards that reached the model's output
    "depth",  # forwards running now (a forward that never returns leaves this at 1)
    "step_ns",  # the longest gap between two consecutive events: the model's step time so far
    "progress",  # ctx.progress calls
    "last_kind",  # index into KINDS of the last event
    "forward_ns",  # when the last forward started
)
KINDS = ("none", "forward started", "forward returned", "backward", "progress")
LAYOUT = struct.Struct("<" + "q" * len(FIELDS))
VERSION = 1


class Calls:
    """Where `Target` reports the model's calls; this one counts nothing (outside a worker)."""

    def forward_started(self) -> None:
        pass

    def forward_ended(self) -> None:
        pass

    def backward_started(self, grad: Any = None) -> None:
        pass

    def progress(self) -> None:
        pass

    def watch_backward(self, output: Any) -> None:
        """Count the backward pass that reaches ``output`` (the forward's logits)."""


class Heartbeat(Calls):
    """The shared block: `Calls` that write it (the worker) and `read`/`reset` (the parent)."""

    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        if create:
            self.path.write_bytes(bytes(LAYOUT.size))
        self._fd = os.open(self.path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, LAYOUT.size)
        if create:
            self.reset()

    def _field(self, name: str) -> int:
        return FIELDS.index(name) * 8

    def _get(self, name: str) -> int:
        return struct.unpack_from("<q", self._map, self._field(name))[0]

    def _set(self, name: str, value: int) -> None:
        struct.pack_into("<q", self._map, self._field(name), value)

    def _event(self, kind: int) -> int:
        now = time.monotonic_ns()
        events = self._get("events")
        if events:
            self._set("step_ns", max(self._get("step_ns"), now - self._get("last_ns")))
        self._set("last_ns", now)
        self._set("last_kind", kind)
        self._set("events", events + 1)
        return now

    def forward_started(self) -> None:
        self._set("forwards", self._get("forwards") + 1)
        self._set("depth", self._get("depth") + 1)
        self._set("forward_ns", self._event(1))

    def forward_ended(self) -> None:
        self._set("depth", max(self._get("depth") - 1, 0))
        self._event(2)

    def backward_started(self, grad: Any = None) -> None:
        self._set("backwards", self._get("backwards") + 1)
        self._event(3)

    def progress(self) -> None:
        self._set("progress", self._get("progress") + 1)
        self._event(4)

    def watch_backward(self, output: Any) -> None:
        if getattr(output, "grad_fn", None) is not None and hasattr(output, "register_hook"):
            output.register_hook(self.backward_started)  # returns None: the gradient is unchanged

    def reset(self) -> None:
        """A new check begins now: every count to zero."""
        LAYOUT.pack_into(self._map, 0, VERSION, 0, time.monotonic_ns(), *([0] * (len(FIELDS) - 3)))

    def read(self) -> dict[str, int]:
        return dict(zip(FIELDS, LAYOUT.unpack_from(self._map, 0), strict=True))

    def close(self) -> None:
        try:
            self._map.close()
            os.close(self._fd)
        except (OSError, ValueError):
            pass


def describe(beat: dict[str, int], now_ns: int | None = None) -> str:
    """The last progress in words: ``forward #4 started 12.0 s ago, not returned``."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    if not beat.get("events"):
        return "none yet in this check"
    ago = (now_ns - beat["last_ns"]) / 1e9
    kind = KINDS[beat["last_kind"]] if 0 <= beat["last_kind"] < len(KINDS) else "event"
    if beat["depth"] > 0:
        return f"forward #{beat['forwards']} started {(now_ns - beat['forward_ns']) / 1e9:.1f} s ago, not returned"
    if kind.startswith("forward"):
        return f"forward #{beat['forwards']} returned {ago:.1f} s ago"
    if kind == "backward":
        return f"backward #{beat['backwards']} began {ago:.1f} s ago (after forward #{beat['forwards']})"
    return f"a ctx.progress call {ago:.1f} s ago (after {beat['forwards']} forward(s))"
