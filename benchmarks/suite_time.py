"""Where the suite's time goes: a worker's start-up, the whole suite end to end, per item and per phase.

    python benchmarks/suite_time.py [--repeat 3] [--profile default --profile quick] [--items 15] [FILE]

Start-up is the time from spawning a worker to its hello (Python, torch imported, faulthandler
armed), split by the worker itself into the interpreter's start (with llmcheck's own imports) and
``import torch``. Each suite run is one ``pytest --llmcheck FILE`` in a subprocess; from its JSON
report, each item's ``duration_s`` and the phases its worker timed (``phases`` in the record,
llmcheck.isolation.child) give the split:

- interpreter and torch: a worker started for the item (the interpreter with llmcheck's imports,
  then ``import torch``; paid by the first item of a model whose worker did not describe the file
  at collection, and by the item after a timeout or crash),
- import: the model file imported in that worker,
- setup: the worker's preparation for each check (a full garbage collection, the target),
- build: the model factory (every ``Target.build`` of the check),
- plan: measuring the model's step cost for the budgets (once per worker and model),
- measure and judge: the check's own work,
- extra processes: what the item spent beyond its first worker (latency's extra measuring processes,
  started on the model's first latency item and reused),
- outside items: the wall time no item accounts for (pytest's start, collection with the first
  worker's start-up and the file's import, the round trips, the report).

Times on a shared machine are inflated by its load: the load average is printed with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP = ("interpreter", "torch")  # before the item's request reached its worker: outside duration_s
CHILD = (*STARTUP, "import", "setup", "build", "plan", "measure", "judge")


def worker_startup() -> tuple[float, dict[str, float]]:
    """(seconds from spawn to hello, the worker's own split of them)."""
    from llmcheck.isolation.worker import WorkerProcess

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        worker = WorkerProcess(Path(tmp), startup_timeout=120)
        hello = worker._receive(time.monotonic() + 120, None, "start-up")
        elapsed = time.perf_counter() - started
        worker.close()
    return elapsed, hello.get("startup", {})


def run_suite(target: Path, profile: str, extra: list[str], keep: Path | None = None) -> dict:
    """One ``pytest --llmcheck`` run: wall time, load average, last line and the report's records
    (the JSON report copied to ``keep``/PROFILE-N.json when given)."""
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "--llmcheck", str(target), "-q", "-p", "no:cacheprovider"]
            + ["--llmcheck-profile", profile, "--llmcheck-json", f"{tmp}/r.json", *extra],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        report = json.loads(Path(f"{tmp}/r.json").read_text()) if Path(f"{tmp}/r.json").exists() else {}
        if keep is not None and report:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{profile}-{len(list(keep.glob(f'{profile}-*.json')))}.json").write_text(json.dumps(report))
    lines = out.stdout.strip().splitlines() or [out.stderr.strip()[-300:]]
    return {"wall": wall, "load": (load, os.getloadavg()[0]), "last": lines[-1], "records": report.get("results", [])}


def phases(record: dict) -> dict[str, float]:
    """An item's seconds by phase: the worker's own split, and what it spent beyond that worker."""
    got = record.get("phases") or {}
    out = {name: float(got.get(f"{name}_s", 0.0)) for name in CHILD}
    inside = sum(v for k, v in out.items() if k not in STARTUP)
    out["extra processes"] = max(0.0, float(record.get("duration_s") or 0.0) - inside)
    return out


def total(record: dict) -> float:
    """An item's seconds: its duration, and the start of a worker it waited for."""
    got = record.get("phases") or {}
    return float(record.get("duration_s") or 0.0) + sum(float(got.get(f"{k}_s", 0.0)) for k in STARTUP)


def summary(run: dict) -> dict[str, float]:
    """Seconds by phase over every item, and outside the items."""
    totals = {name: 0.0 for name in (*CHILD, "extra processes")}
    for record in run["records"]:
        for name, seconds in phases(record).items():
            totals[name] += seconds
    totals["outside items"] = max(0.0, run["wall"] - sum(total(r) for r in run["records"]))
    return totals


def print_run(run: dict, profile: str, items: int) -> None:
    ran = [r for r in run["records"] if r["status"] != "skipped"]
    print(
        f"\n{profile}: {run['wall']:.1f} s end to end, {len(run['records'])} items ({len(ran)} ran); "
        f"load average {run['load'][0]:.1f} -> {run['load'][1]:.1f}; {run['last']}",
        flush=True,
    )
    totals = summary(run)
    print("  by phase: " + ", ".join(f"{k} {v:.1f} s" for k, v in totals.items()), flush=True)
    print(f"  slowest {items} items (seconds: total = " + " + ".join((*CHILD, "extra")) + "):", flush=True)
    for r in sorted(run["records"], key=lambda r: -total(r))[:items]:
        split = " + ".join(f"{v:.2f}" for v in phases(r).values())
        builds = (r.get("phases") or {}).get("builds", "-")
        name = r["id"].split("::", 1)[-1]
        print(f"    {total(r):7.2f} = {split}  builds {builds}  {name} [{r['status']}]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", nargs="?", default=str(ROOT / "examples" / "tiny_gpt.py"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="append", choices=("default", "quick", "full"))
    parser.add_argument("--items", type=int, default=15, help="slowest items listed per run")
    parser.add_argument("--no-startup", action="store_true", help="skip timing bare worker start-ups")
    parser.add_argument("--keep", type=Path, help="folder to keep each run's JSON report in")
    args, extra = parser.parse_known_args()
    print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    if not args.no_startup:
        starts = [worker_startup() for _ in range(max(args.repeat, 3))]
        times = [t for t, _ in starts]
        split = {k: statistics.median(s[k] for _, s in starts if k in s) for k in starts[0][1]}
        print(
            f"worker start-up: median {statistics.median(times):.2f} s over {len(times)} "
            f"(min {min(times):.2f}, max {max(times):.2f}); in the worker: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()),
            flush=True,
        )
    for profile in args.profile or ["default"]:
        runs = [run_suite(Path(args.file), profile, extra, args.keep) for _ in range(args.repeat)]
        for run in runs:
            print_run(run, profile, args.items)
        walls = [r["wall"] for r in runs]
        print(f"{profile}: median {statistics.median(walls):.1f} s over {len(walls)} run(s)", flush=True)


if __name__ == "__main__":
    main()
