"""Bounded output: what a worker prints is kept as its first and last bytes per check, never whole.

A model may print without end (a debug print in a loop: gigabytes in seconds). The worker's stdout
and stderr go into a pipe that a thread of the parent drains as fast as the model writes, so the
model never blocks on a full pipe, and nothing grows on disk. Each check's output keeps its first
``HEAD`` and last ``TAIL`` bytes; what lies between is counted and shown as ``[... N bytes cut
...]``. Files that other processes append to (fault traces, a rank's log) are read by seeking:
never the whole file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import threading
from pathlib import Path

HEAD = 8_000  # bytes kept from the start of a check's output
TAIL = 16_000  # bytes kept from its end
F_SETPIPE_SZ = 1031  # linux/fcntl.h: a 1 MiB pipe takes a fast printer's output in fewer reads


def cut_marker(n: int) -> str:
    return f"\n[... {n} bytes cut ...]\n"


class Capture:
    """The first ``head`` and last ``tail`` bytes of a stream, and how many bytes lay between."""

    def __init__(self, head: int = HEAD, tail: int = TAIL):
        self.head_limit, self.tail_limit = head, tail
        self.head = bytearray()
        self.tail = bytearray()
        self.cut = 0

    def add(self, data: bytes) -> None:
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        if len(data) >= self.tail_limit:
            self.cut += len(self.tail) + len(data) - self.tail_limit
            self.tail = bytearray(data[-self.tail_limit :])
            return
        self.tail += data
        over = len(self.tail) - self.tail_limit
        if over > 0:
            self.cut += over
            del self.tail[:over]

    @property
    def total(self) -> int:
        return len(self.head) + self.cut + len(self.tail)

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        return head + (cut_marker(self.cut) if self.cut else "") + tail


class OutputKeeper:
    """Drains the read end of a worker's output pipe on a daemon thread into a `Capture` per check.

    ``mark()`` starts the next check's capture; ``take()`` drains what the pipe still holds (the
    worker flushes before it answers, so its output is all in the pipe by then) and returns the
    text. Reads happen under a lock, by the thread or by ``take()``, so bytes stay in order.
    """

    def __init__(self, fd: int, head: int = HEAD, tail: int = TAIL):
        self.fd, self.head, self.tail = fd, head, tail
        os.set_blocking(fd, False)
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default size works, in more reads
        self.capture = Capture(head, tail)
        self.closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="llmcheck-output", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.closed:
            try:
                select.select([self.fd], [], [], 1.0)
            except (OSError, ValueError):
                return
            with self._lock:
                self._drain(16)

    def _drain(self, reads: int = 64) -> None:
        """Read what is available now, at most ``reads`` chunks (the caller holds the lock): a model
        that never stops printing must not keep the lock from ``take()``."""
        for _ in range(reads):
            if self.closed:
                return
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                self._close()
                return
            if not chunk:  # every writer is gone
                self._close()
                return
            self.capture.add(chunk)

    def _close(self) -> None:
        self.closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass

    def mark(self) -> None:
        with self._lock:
            self._drain()
            self.capture = Capture(self.head, self.tail)

    def take(self) -> str:
        with self._lock:
            self._drain()
            return self.capture.text()

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self._close()


def read_span(path: Path, start: int = 0, head: int = HEAD, tail: int = TAIL) -> str:
    """The bytes of ``path`` from offset ``start`` to its end, as the first ``head`` and last ``tail``
    of them with a cut marker between, read by seeking ("" when the file does not exist)."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            length = max(end - start, 0)
            f.seek(start)
            if length <= head + tail:
                return f.read(length).decode("utf-8", "replace")
            first = f.read(head)
            f.seek(end - tail)
            last = f.read(tail)
    except FileNotFoundError:
        return ""
    return first.decode("utf-8", "replace") + cut_marker(length - head - tail) + last.decode("utf-8", "replace")


def read_tail(path: Path, limit: int) -> tuple[str, bool]:
    """The last ``limit`` bytes of ``path`` (seeking to them) and whether anything came before."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(end - limit, 0))
            return f.read(limit).decode("utf-8", "replace"), end > limit
    except FileNotFoundError:
        return "", False
