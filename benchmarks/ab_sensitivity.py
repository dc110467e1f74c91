"""False alarms and the smallest slowdown caught: `llmcheck ab` against comparing two stored reports.

    python benchmarks/ab_sensitivity.py                 # about 4-5 minutes on a 2-core machine
    python benchmarks/ab_sensitivity.py --ab-runs 2 --reports 3 --budget 20   # a quicker look
    python benchmarks/ab_sensitivity.py --ci             # the CI recipe: 3-minute runs, 10 % slowdown
    python benchmarks/ab_sensitivity.py --replay a.json b.json ...   # re-judge stored A/A documents

``--ci`` asks the issue-19 question: with ``llmcheck ci``'s default budget (150 s of rounds, a
3-minute job), how often is a 10 % slowdown called, and how often does A/A cry wolf? Twenty real
3-minute runs per arm take two hours; the benchmark runs ``--ab-runs`` real A/A runs and one
real run of 11 against 10 blocks (a structural +10 %, diluted a little by the embedding and the
head), then replays the pooled A/A *process pairs* (the unit of the interval when warm workers
serve several rounds, `llmcheck.ab.engine`): a replayed run draws as many process pairs as a real
run got, with replacement, each multiplied by 1 + s.

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
import math
import os
import random
import statistics
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


def ab_run(base: Path, head: Path, out: Path, budget: float, seed: int, extra: tuple[str, ...] = ()) -> dict:
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
        *extra,
    ] + [a for s in SETTINGS for a in ("--set", s)]
    started = time.monotonic()
    subprocess.run(cmd, env=ENV, cwd=out.parent, capture_output=True, text=True, timeout=budget * 3 + 120)
    result = json.loads(out.read_text())["results"][0]
    result["wall_s"] = time.monotonic() - started
    return result


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


def process_pairs(result: dict) -> list[float]:
    """A run's ratios per process pair (its rounds' geometric mean), as the engine's interval takes them."""
    from llmcheck.ab.engine import process_ratios

    return process_ratios(result["pairs"])


def replay_pairs(units: list[float], n: int, slowdown: float, trials: int, rng: random.Random, threshold: float):
    """The share of ``trials`` replayed runs of ``n`` process pairs called a regression, and the median
    smallest slowdown they could have detected."""
    from llmcheck.stats import ab_intervals as ab_stats

    caught, could = 0, []
    for _ in range(trials):
        est = ab_stats.estimate([rng.choice(units) * (1 + slowdown) for _ in range(n)])
        caught += ab_stats.verdict(est, threshold) == ("improvement" if slowdown < 0 else "regression")
        found = ab_stats.detectable(est, threshold)
        could.append(found[0] if found else float("inf"))
    return caught / trials, sorted(could)[len(could) // 2]


def ci_main(args) -> None:
    """The CI recipe's question: 3-minute runs at ``llmcheck ci``'s defaults, a 10 % slowdown."""
    from ab_model_sources import write

    started, extra = time.time(), ("--ab-recycle", str(args.recycle), "--ab-repeats", str(args.repeats))
    extra += ("--ab-precision", "0", "--threshold", "5%")  # a CI job spends its budget: no early stop
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keep = Path(args.keep) if args.keep else tmp  # the A/B documents, for a later --replay
        keep.mkdir(parents=True, exist_ok=True)
        ten, eleven = write(tmp / "ten", 10), write(tmp / "eleven", 11)
        runs = [json.loads(Path(f).read_text())["results"][0] for f in args.replay]
        for i in range(args.ab_runs):
            runs.append(ab_run(ten, ten, keep / f"aa-{started:.0f}-{i}.json", args.budget, 100 + i, extra))
            print(f"  real A/A {i + 1}: {runs[-1]['message']} ({runs[-1]['wall_s']:.0f} s)", flush=True)
        plus10 = []
        for i in range(args.ten_runs):
            plus10.append(ab_run(ten, eleven, keep / f"ab10-{started:.0f}-{i}.json", args.budget, 200 + i, extra))
    ci_report(args, runs, plus10, time.time() - started)


def ci_report(args, aa: list[dict], plus10: list[dict], seconds: float) -> None:
    rng = random.Random(0)
    raw = [u for r in aa for u in process_pairs(r)]
    # An A/A's true ratio is 1: the pool is centred on it, or the few runs' chance offset (one run's
    # process pairs at 1.7) would be replayed as a bias into every trial.
    centre = math.exp(statistics.fmean(math.log(u) for u in raw))
    units = [u / centre for u in raw]
    n = round(sum(len(process_pairs(r)) for r in aa) / len(aa))
    rounds = sum(len(r["pairs"]) for r in aa) / len(aa)
    alarms = sum(r["verdict"] in ("regression", "improvement") for r in aa)
    walls = [r["wall_s"] for r in aa + plus10 if "wall_s" in r]
    print(f"# ab_sensitivity --ci ({seconds / 60:.1f} min; load average {os.getloadavg()[0]:.1f} at the end)")
    print(
        f"settings: budget {args.budget:g} s of rounds, --ab-recycle {args.recycle}, --ab-repeats {args.repeats}, "
        f"threshold 5%, 10 vs 11 blocks (bs 8 x 16 tokens, float32, one thread)"
    )
    print(
        f"real A/A runs: {len(aa)}, {alarms} false alarm(s); {rounds:.1f} rounds in {n} process pairs per run "
        "on average" + (f"; wall {min(walls):.0f}-{max(walls):.0f} s per run" if walls else "")
    )
    for r in plus10:
        print(f"real +10 % (11 vs 10 blocks): {r['verdict']}: {r['message']} ({r['wall_s']:.0f} s)")
    if len(units) < 2 * n:  # drawing 5 from 6 with replacement repeats values: intervals far too narrow
        print(f"replay skipped: {len(units)} pooled A/A process pairs, fewer than 2 runs' worth ({2 * n})")
        return
    print(
        f"replayed from {len(units)} pooled A/A process pairs (geometric mean {centre:.3f}, centred on 1), "
        f"{args.trials} runs of {n} process pairs each:"
    )
    print("slowdown | regression called | median 'could have detected'")
    for s in (0.0, 0.05, 0.10, 0.15, 0.20):
        called, could = replay_pairs(units, n, s, args.trials, rng, 0.05)
        print(f"{s:>7.0%} | {called:>8.1%} | +{could:.1%}" + ("   (A/A: false alarms)" if s == 0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ab-runs", type=int, default=4)
    parser.add_argument("--budget", type=float, default=40.0)
    parser.add_argument("--reports", type=int, default=5)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--ci", action="store_true", help="3-minute runs at llmcheck ci's defaults, +10 %%")
    parser.add_argument("--recycle", type=int, default=8, help="--ci: --ab-recycle (default 8)")
    parser.add_argument("--repeats", type=int, default=4, help="--ci: --ab-repeats (default 4)")
    parser.add_argument("--ten-runs", type=int, default=1, help="--ci: real runs of 11 vs 10 blocks (default 1)")
    parser.add_argument("--replay", nargs="*", default=[], metavar="AB.json", help="--ci: earlier A/A documents")
    parser.add_argument("--keep", metavar="DIR", help="--ci: keep the A/B documents in DIR")
    args = parser.parse_args()
    if args.ci:
        args.budget = args.budget if args.budget != 40.0 else 150.0
        return ci_main(args)
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
