"""Time the whole default suite on the example model, and a worker's start-up.

    python benchmarks/suite_time.py [--repeat 3]

Start-up is the time from spawning a worker to its hello (Python, torch imported, faulthandler
armed). The suite time is one `pytest --llmcheck examples/tiny_gpt.py` in a subprocess, end to end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker_startup() -> float:
    from llmcheck.isolation.worker import WorkerProcess

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        worker = WorkerProcess(Path(tmp), startup_timeout=120)
        worker._receive(time.monotonic() + 120, worker._offsets(), "start-up")
        elapsed = time.perf_counter() - started
        worker.close()
    return elapsed


def suite() -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--llmcheck",
                str(ROOT / "examples" / "tiny_gpt.py"),
                "-q",
                "-p",
                "no:cacheprovider",
                "--llmcheck-json",
                f"{tmp}/r.json",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
    return elapsed, out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    starts = [worker_startup() for _ in range(args.repeat)]
    print(
        f"worker start-up: median {statistics.median(starts):.2f} s over {len(starts)} "
        f"(min {min(starts):.2f}, max {max(starts):.2f}); target < 2 s"
    )
    runs = [suite() for _ in range(args.repeat)]
    times = [t for t, _ in runs]
    print(
        f"default suite on examples/tiny_gpt.py: median {statistics.median(times):.1f} s over {len(times)} "
        f"(min {min(times):.1f}, max {max(times):.1f}); target < 30 s; last: {runs[-1][1]}"
    )


if __name__ == "__main__":
    main()
