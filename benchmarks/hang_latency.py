"""How soon a hang is reported, per check, with the default settings; and that no healthy check is cut.

    python benchmarks/hang_latency.py [--checks "causal or eval or gradient or resume or hang"] [--clean]

Runs ``pytest --llmcheck`` with the default settings (``timeout`` 300 s, the hang check's 60 s,
``hang_factor`` 20, ``hang_floor_s`` 10) on three hanging models, each the file's only model:

- a forward that deadlocks on a Python lock on its 4th call (on one model instance),
- a forward that deadlocks on a native mutex (a second ``pthread_mutex_lock`` through ctypes, in
  native code) on its 4th call,
- a DataLoader worker deadlocked in ``__getitem__`` (the hang check's eval data).

For each check it prints the status, the rule that fired (``progress``: no progress while the
worker idled in the model's forward; ``same_hang``: stuck in the frame of a hang already found;
``timeout``: the clock) and the item's duration (a later check's includes starting a fresh worker,
as the hung one was killed). Target (issue 16.8): a deadlocked forward is reported within 30 s
per check. ``--clean`` also runs the example suite (examples/tiny_gpt.py) with the defaults and
lists any item a hang rule or the memory limit cut: there must be none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 30.0

HEADER = """
import ctypes
import threading
import torch
import torch.nn as nn
import llmcheck

LOCK = threading.Lock()
MUTEX = ctypes.create_string_buffer(64)  # a pthread_mutex_t, default type: locking it twice deadlocks
LIBC = ctypes.CDLL(None)
LIBC.pthread_mutex_init(MUTEX, None)


class Tiny(nn.Module):
    def __init__(self, stuck=None):
        super().__init__()
        self.emb, self.head, self.stuck, self.calls = nn.Embedding(64, 32), nn.Linear(32, 64), stuck, 0

    def forward(self, idx):
        self.calls += 1
        if self.calls == 4 and self.stuck == "python":
            LOCK.acquire()
            LOCK.acquire()
        if self.calls == 4 and self.stuck == "native":
            LIBC.pthread_mutex_lock(MUTEX)
            LIBC.pthread_mutex_lock(MUTEX)
        return self.head(self.emb(idx))
"""

SCENARIOS = {
    "forward deadlocks on a Python lock (4th call)": HEADER
    + """

@llmcheck.model(causal=True, vocab_size=64, max_seq_len=32)
def stuck_python():
    return Tiny(stuck="python")
""",
    "forward deadlocks on a native mutex (4th call)": HEADER
    + """

@llmcheck.model(causal=True, vocab_size=64, max_seq_len=32)
def stuck_native():
    return Tiny(stuck="native")
""",
    "DataLoader worker deadlock (hang check)": HEADER
    + """

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            LOCK.acquire()
            LOCK.acquire()
        return torch.zeros(8, dtype=torch.long)


@llmcheck.model(causal=True, vocab_size=64, max_seq_len=32)
def stuck_loader():
    return Tiny()


@llmcheck.eval_data
def batches():
    return torch.utils.data.DataLoader(Data(), batch_size=2, num_workers=2)
""",
}


def pytest_run(target: Path, select: str | None, workdir: Path) -> tuple[list[dict], float]:
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "pytest", "--llmcheck", str(target), "-q", "-p", "no:cacheprovider"]
    cmd += ["--llmcheck-json", str(report)] + (["-k", select] if select else [])
    started = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    return json.loads(report.read_text())["results"], time.perf_counter() - started


def hangs(checks: str) -> float:
    worst = 0.0
    for name, source in SCENARIOS.items():
        workdir = Path(tempfile.mkdtemp(prefix="hang-bench-"))
        (workdir / "model.py").write_text(source)
        select = "hang" if "DataLoader" in name else checks
        records, wall = pytest_run(workdir / "model.py", select, workdir)
        print(f"{name}: session {wall:.1f} s")
        for r in records:
            fault = (r.get("metrics") or {}).get("fault") or {}
            rule = fault.get("rule", "-")
            print(f"  {r['check']:<12} {r['status']:<8} {rule:<10} {r['duration_s']:6.1f} s  {r['message'][:110]}")
            if r["status"] == "timeout" and "DataLoader" not in name:
                worst = max(worst, r["duration_s"])
    print(f"worst deadlocked-forward check: {worst:.1f} s (target: {TARGET_S:g} s)")
    return worst


def clean() -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="hang-bench-clean-"))
    records, wall = pytest_run(ROOT / "examples" / "tiny_gpt.py", None, workdir)
    cut = [
        f"{r['id']}: {r['message'][:160]}"
        for r in records
        if ((r.get("metrics") or {}).get("fault") or {}).get("rule") in ("progress", "same_hang")
        or ((r.get("metrics") or {}).get("fault") or {}).get("kind") == "out_of_memory"
    ]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(f"examples/tiny_gpt.py: {len(records)} items in {wall:.1f} s, {statuses}")
    print(f"  cut by a hang or memory rule: {cut or 'none'}")
    return cut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", default="causal or eval or gradient or resume or hang")
    parser.add_argument("--clean", action="store_true", help="also run the example suite and list cut items")
    args = parser.parse_args(argv)
    worst = hangs(args.checks)
    cut = clean() if args.clean else []
    return 0 if worst <= TARGET_S and not cut else 1


if __name__ == "__main__":
    sys.exit(main())
