"""Peak-memory readers and the device synchronisation every timer and reader needs (worker side).

One definition for the performance checks, the memory check and the compression check:
``cuda_peak`` (``max_memory_allocated`` after a reset) and ``rss_peak`` (the process's resident
set: Linux's high-water mark reset through ``/proc/self/clear_refs``, else a sampling thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def sync(device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cuda_peak(run: Callable[[], Any], device) -> tuple[float, float]:
    """(peak allocated bytes during ``run()``, allocated bytes before it) on a CUDA device."""
    import torch

    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    sync(device)
    return float(torch.cuda.max_memory_allocated(device)), float(before)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def rss_peak(run: Callable[[], Any]) -> tuple[float, float]:
    """(peak RSS during ``run()``, RSS before it), in bytes. Linux resets the high-water mark on
    ``echo 5 > /proc/self/clear_refs``; elsewhere a thread samples RSS every millisecond."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_bytes("VmRSS")
        run()
        return float(_status_bytes("VmHWM")), float(before)
    except OSError:
        return sampled_rss_peak(run)


def sampled_rss_peak(run: Callable[[], Any], interval_s: float = 0.001, min_time_s: float = 0.0) -> tuple[float, float]:
    """(peak RSS, RSS before) sampled by a thread every ``interval_s`` while ``run()`` is repeated
    for at least ``min_time_s`` (once when 0)."""
    import psutil

    proc, done = psutil.Process(), threading.Event()
    before = proc.memory_info().rss
    peak = [before]

    def sample():
        while not done.wait(interval_s):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        while True:
            run()
            if time.perf_counter() - start >= min_time_s:
                break
    finally:
        done.set()
        thread.join()
    return float(max(peak[0], proc.memory_info().rss)), float(before)
