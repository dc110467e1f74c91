"""False alarms and the smallest slowdown caught: `llmcheck ab` against comparing two stored reports.

    python benchmarks/ab_sensitivity.py                 # about 4-5 minutes on a 2-core machine
    python benchmarks/ab_sensitivity.py --ab-runs 2 --reports 3 --budget 20   # a quicker look

Both sides measure the tests' five-block model (tests/ab_model_sources.py: bs 8 x 16 tokens,
float32, one thread), on this machine as it is (other jobs included: that is the point).

- `llmcheck ab`: ``--ab-runs`` real A/A runs (the same model as BASE and HEAD) give A/A verdicts
  and their pairs; one real run against the six-block model checks a structural +20 %. The pooled
  A/A pairs are then replayed: a run is ``pairs`` pairs drawn with replacement, and a slowdown s
  multiplies each drawn ratio by 1 + s, judged as `llmcheck.stats.ab_intervals` judges a real run.
- stored reports: ``--reports`` separate ``pytest --llmcheck`` runs of the same model, each written
  to its own JSON report, compared pairwise with `llmcheck.reports.compare` (default rules). A
  slowdown s multiplies HEAD's timings (every ``*_ms`` value, per-process medians and sample series,
  not the calibration workload) by 1 + s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SLOWDOWNS = (0.0, 0.02, 0.05, 0.08, 0.10, 0.15, 0.20)
SETTINGS = ["latency.batch_sizes=[8]", 'latency.precisions=["float32"]', "latency.seq_lens=[16]"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def ab_run(base: Path, head: Path, out: Path, budget: float, seed: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "llmcheck.cli",
        "ab",
        str(base),
        str(head),
        "--ab-budget",
        f"{budget}s",
        "--seed",
        str(seed),
        "--json",
        str(out),
        "-q",
    ] + [a for s in SETTINGS for a in ("--set", s)]
    subprocess.run(cmd, env=ENV, cwd=out.parent, capture_output=True, text=True, timeout=budget * 3 + 120)
    return json.loads(out.read_text())["results"][0]


def stored_report(model: Path, out: Path) -> dict:
    from llmcheck.reports import json_report

    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--llmcheck",
        str(model),
        "-k",
        "latency",
        "-q",
        "-p",
        "no:cacheprovider",
        "--llmcheck-json",
        str(out),
    ] + [a for s in SETTINGS for a in ("--llmcheck-set", s)]
    subprocess.run(cmd, env=ENV, cwd=out.parent, capture_output=True, text=True, timeout=600)
    return json_report.read(out)


def slowed(doc: dict, factor: float) -> dict:
    """A copy of a report whose timings (``*_ms`` values, per-process medians and sample series) are
    ``factor`` times larger; the calibration workload (the machine's speed) stays as measured."""

    def scale(value, key=""):
        if isinstance(value, dict):
            return {k: scale(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [scale(v, key) for v in value]
        timing = (key.endswith("_ms") or key == "medians") and not key.startswith("calibration")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and timing:  # not the machine's speed
            return value * factor
        return value

    out = json.loads(json.dumps(doc))
    for r in out["results"]:
        r["metrics"] = scale(r.get("metrics") or {})
        r["samples"] = {k: scale(v, k) for k, v in (r.get("samples") or {}).items()}
    out.pop("digest", None)
    return out


def compare_verdict(base: dict, head: dict) -> str:
    """regression, inconclusive (compare refuses: too noisy across the two runs) or no regression."""
    from llmcheck.reports import compare

    result = compare.compare(base, head, compare.Rules(allow_env_mismatch=True))
    if result["regressions"]:
        return "regression"
    return "inconclusive" if any(r["verdict"] == "inconclusive" for r in result["rows"]) else "no regression"


def replay(pairs: list[float], n: int, slowdown: float, trials: int, rng: random.Random) -> float:
    from llmcheck.stats import ab_intervals as ab_stats

    caught = 0
    for _ in range(trials):
        est = ab_stats.estimate([rng.choice(pairs) * (1 + slowdown) for _ in range(n)])
        caught += ab_stats.verdict(est, 0.05) == ("improvement" if slowdown < 0 else "regression")
    return caught / trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ab-runs", type=int, default=4)
    parser.add_argument("--budget", type=float, default=40.0)
    parser.add_argument("--reports", type=int, default=5)
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    from ab_model_sources import write

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        five, six = write(tmp / "five", 5), write(tmp / "six", 6)
        aa = [ab_run(five, five, tmp / f"aa{i}.json", args.budget, i) for i in range(args.ab_runs)]
        plus20 = ab_run(five, six, tmp / "ab20.json", args.budget, 99)
        docs = [stored_report(five, tmp / f"report{i}.json") for i in range(args.reports)]
    report(args, aa, plus20, docs, time.time() - started)


def report(args, aa: list[dict], plus20: dict, docs: list[dict], seconds: float) -> None:
    rng = random.Random(0)
    pairs = [p["ratio"] for r in aa for p in r["pairs"]]
    n = round(sum(len(r["pairs"]) for r in aa) / len(aa))
    alarms = sum(r["verdict"] in ("regression", "improvement") for r in aa)
    print(f"# ab_sensitivity ({seconds / 60:.1f} min; load average {os.getloadavg()[0]:.1f} at the end)")
    print(
        f"llmcheck ab: {args.ab_runs} real A/A runs of {args.budget:g} s -> {alarms} false alarm(s); "
        f"{n} pairs per run on average; pooled A/A pair ratios {min(pairs):.3f}-{max(pairs):.3f}"
    )
    for r in aa:
        print(f"  A/A: {r['message']}")
    print(f"  real +20 % (6 blocks vs 5): {plus20['message']}")
    ordered = list(itertools.permutations(range(len(docs)), 2))
    print(f"stored reports: {len(docs)} separate pytest --llmcheck runs, {len(ordered)} ordered pairs compared")
    print(
        f"slowdown | llmcheck ab: regression called (replayed, {args.trials} runs of {n} pairs) | "
        "compare of two stored reports: regression flagged / inconclusive"
    )
    for s in SLOWDOWNS:
        ab_rate = replay(pairs, n, s, args.trials, rng)
        verdicts = [compare_verdict(docs[i], slowed(docs[j], 1 + s)) for i, j in ordered]
        flagged, unsure = (verdicts.count(v) / len(verdicts) for v in ("regression", "inconclusive"))
        print(
            f"{s:>7.0%} | {ab_rate:>8.1%} | {flagged:>8.1%} / {unsure:.1%}"
            + ("   (A/A: false alarms)" if s == 0 else "")
        )


if __name__ == "__main__":
    main()
