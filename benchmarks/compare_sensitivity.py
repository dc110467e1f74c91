"""How often `llmcheck compare` cries wolf, and how small a slowdown it catches, on real timings.

    python benchmarks/compare_sensitivity.py            # measure with tests/data/recorded_forward_ms.json
    nice -n -20 python benchmarks/compare_sensitivity.py --record   # first re-record the samples

Record on a quiet machine (or with a high priority, as above, on a shared one): the samples are
meant to show a model's own timing noise, not other jobs' time slices.

Recording times the forward pass of the tests' clean tiny model (tests/model_sources.py) in
several fresh processes, one after another, as stored reports from separate CI runs would be.
The measurements then replay those samples through `llmcheck.reports.compare`:
- A/A within a process: two disjoint random draws from one process's samples;
- A/A across processes: draws from two different processes (run-to-run drift included);
- power: the same with HEAD's samples multiplied by 1 + slowdown.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "recorded_forward_ms.json"
sys.path.insert(0, str(ROOT / "tests"))

RECORD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from model_sources import CLEAN
ns = {}
exec(compile(CLEAN, "model.py", "exec"), ns)
torch.manual_seed(0)
torch.set_num_threads(1)
model = ns["TinyLM"]().eval()
x = torch.randint(0, 64, (2, 16))
with torch.no_grad():
    for _ in range(50):
        model(x)
    out = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); model(x); out.append((time.perf_counter() - t) * 1e3)
print(json.dumps(out))
"""


def record(processes: int, samples: int) -> None:
    runs = []
    for i in range(processes):
        out = subprocess.run(
            [sys.executable, "-c", RECORD, str(ROOT / "tests"), str(samples)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout))
        print(f"process {i}: median {sorted(runs[-1])[len(runs[-1]) // 2]:.4f} ms", file=sys.stderr)
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(
        json.dumps(
            {
                "what": "forward ms of tests/model_sources.py CLEAN, batch 2 x 16, 1 thread, one list per process",
                "processes": [[round(v, 5) for v in run] for run in runs],
            }
        )
        + "\n"
    )


def verdict(base: list[float], head: list[float], **rules) -> str:
    from report_data import document
    from report_data import record as make_record

    from llmcheck.reports import compare

    docs = [document([make_record("latency", samples={"forward_ms": s})]) for s in (base, head)]
    rows = compare.compare(*docs, compare.Rules(**rules))["rows"]
    return next((r["verdict"] for r in rows if r["kind"] == "samples"), "unchanged")


def rate(trials: int, n: int, draw, slowdown: float = 0.0, **rules) -> float:
    rng = random.Random(1)
    hits = 0
    for _ in range(trials):
        base, head = draw(rng, n)
        hits += verdict(base, [v * (1 + slowdown) for v in head], **rules) == "regression"
    return hits / trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    if args.record:
        record(processes=5, samples=2000)
    runs = json.loads(DATA.read_text())["processes"]

    def within(rng, n):
        run = rng.choice(runs)
        both = rng.sample(run, 2 * n)
        return both[:n], both[n:]

    def across(rng, n):
        a, b = rng.sample(runs, 2)
        return rng.sample(a, n), rng.sample(b, n)

    medians = sorted(sorted(r)[len(r) // 2] for r in runs)
    print(
        f"{len(runs)} processes, medians {medians[0]:.4f}-{medians[-1]:.4f} ms "
        f"({medians[-1] / medians[0] - 1:.1%} apart)"
    )
    print("n per side | A/A within | A/A across | +5% within | +10% within | +10% across")
    for n in (10, 30, 100, 300, 1000):
        cells = [
            rate(args.trials, n, within),
            rate(args.trials, n, across),
            rate(args.trials, n, within, 0.05),
            rate(args.trials, n, within, 0.10),
            rate(args.trials, n, across, 0.10),
        ]
        print(f"{n:>10} | " + " | ".join(f"{c:>10.1%}" for c in cells))


if __name__ == "__main__":
    main()
