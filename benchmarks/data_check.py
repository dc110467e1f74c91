"""The data check's index and its verdicts on random-window data.

    python benchmarks/data_check.py index [--sequences 10000] [--length 64] [--ngram 13]
    python benchmarks/data_check.py sampling [--seeds 100] [--corpus-chars 48000] [--train 1600] [--eval 320]

``index``: memory and speed of the n-gram index, rbloom's Bloom filter against a Python set. Builds
the training-side index of ``--sequences`` random token rows the way llmcheck.checks.data.dedup
does (64-bit n-gram hashes), then queries as many unseen rows: bytes per n-gram for a set and for
the Bloom filter, the observed false-positive rate, and rows per second of each phase.

``sampling``: false alarms and detections of the data check's judgement on data drawn the nanoGPT
way: random windows of examples/data/corpus.txt (its first ``--corpus-chars`` bytes), drawn with
replacement, train from the first 90% and eval from the last 10%. Per seed it judges the clean
splits, eval drawn from the training part, and train with a tenth of its rows written twice;
prints failures of each with a 95% upper bound on their rate.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np
from rbloom import Bloom

from llmcheck.checks.data.check import CHECK, judge
from llmcheck.checks.data.dedup import Overlap, SplitStats
from llmcheck.checks.data.ngrams import ngram_hashes, resolve_ngram
from llmcheck.checks.data.sampling import expected_repeats
from llmcheck.checks.data.windows import baseline, window_stats

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus.txt"


def index(args) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 50257, (args.sequences, args.length))
    unseen = rng.integers(0, 50257, (args.sequences, args.length))
    per_row = args.length - args.ngram + 1

    t0 = time.perf_counter()
    hashes = [ngram_hashes(row, args.ngram).tolist() for row in train]
    hashing = time.perf_counter() - t0
    tracemalloc.start()  # the set's table and the int objects it keeps alive, as the check would hold them
    as_set = set()
    for row in train:
        as_set.update(ngram_hashes(row, args.ngram).tolist())
    set_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    bloom = Bloom(int(1.25 * args.sequences * per_row), args.error_rate)
    t0 = time.perf_counter()
    for h in hashes:
        bloom.update(h)
    insert = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = sum(g in bloom for row in unseen for g in ngram_hashes(row, args.ngram).tolist())
    query = time.perf_counter() - t0
    n = len(as_set)
    print(f"{args.sequences} rows x {args.length} tokens, {args.ngram}-grams: {n} distinct n-grams")
    print(f"python set: {set_bytes / n:.1f} bytes per n-gram ({set_bytes / 2**20:.1f} MiB)")
    print(
        f"rbloom:     {bloom.size_in_bits / 8 / n:.2f} bytes per n-gram ({bloom.size_in_bits / 8 / 2**20:.2f} MiB), "
        f"observed false-positive rate {hits / (args.sequences * per_row):.5f} (target {args.error_rate:g})"
    )
    print(
        f"hashing {args.sequences / hashing:.0f} rows/s; Bloom insert {args.sequences / insert:.0f} rows/s; "
        f"hash + query {args.sequences / query:.0f} rows/s"
    )


def judged(train: np.ndarray, evals: np.ndarray, p) -> tuple[str, dict]:
    """The data check's verdict on two splits of token rows, measured as the worker does."""
    tr = SplitStats(256, p)
    for i, row in enumerate(train):
        tr.add(i, row)
    n = resolve_ngram(p.ngram, 256, tr.lengths)
    tr.index_ngrams(n)
    windows, pairs = window_stats(tr, n)
    ev = SplitStats(256, p, overlap=Overlap(tr, p))
    for i, row in enumerate(evals):
        ev.add(i, row)
    m = {"vocab_size": 256, "ngram": n, "train": {**tr.summary(), "windows": windows}}
    m.update(ev.overlap.summary(), eval={**ev.summary(), "windows": window_stats(ev, n)[0]})
    m.update(baseline=baseline(tr, n, pairs, p.near_duplicate), length_jsd=tr.length_jsd(ev))
    m.update(token_jsd=tr.token_jsd(ev), token_jsd_train_halves=tr.halves_jsd())
    return judge(m, p).status, m


def upper95(failures: int, runs: int) -> float:
    """One-sided 95% upper bound on a rate from ``failures`` in ``runs`` (exact for 0: 1 - 0.05^(1/n))."""
    if failures == 0:
        return 1 - 0.05 ** (1 / runs)
    low, high = failures / runs, 1.0
    for _ in range(60):  # bisection on the binomial tail P(X <= failures) = 0.05
        mid = (low + high) / 2
        tail = sum(_pmf(k, runs, mid) for k in range(failures + 1))
        low, high = (mid, high) if tail > 0.05 else (low, mid)
    return high


def _pmf(k: int, n: int, rate: float) -> float:
    from math import comb

    return comb(n, k) * rate**k * (1 - rate) ** (n - k)


def get_batch(part: np.ndarray, rows: int, length: int, rng) -> np.ndarray:
    """nanoGPT's get_batch: ``rows`` windows at random starts of ``part``, drawn with replacement."""
    return np.stack([part[s : s + length] for s in rng.integers(0, len(part) - length, rows)])


def sampling(args) -> None:
    p = types.SimpleNamespace(**{k: v.default for k, v in CHECK.params.items()})
    text = np.frombuffer(CORPUS.read_bytes()[: args.corpus_chars], dtype=np.uint8).astype(np.int64)
    cut = int(0.9 * len(text))
    cases = {"clean": [], "eval from train part": [], "train 10% written twice": []}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        train = get_batch(text[:cut], args.train, args.length, rng)
        evals, leak = (
            get_batch(text[cut:], args.eval, args.length, rng),
            get_batch(text[:cut], args.eval, args.length, rng),
        )
        twice = np.concatenate([train[: args.train - args.train // 10], train[: args.train // 10]])
        for name, (tr, ev) in zip(cases, ((train, evals), (train, leak), (twice, evals))):
            status, m = judged(tr, ev, p)
            cases[name].append((status, m))
    spent = time.perf_counter() - t0
    population = cut - args.length
    print(
        f"{args.seeds} seeds: {args.train} train windows of {args.length} from {population} start positions "
        f"(chance repeats {expected_repeats(args.train, population):.1f}), {args.eval} eval windows; "
        f"{spent / (3 * args.seeds):.2f} s a judged pair"
    )
    for name, runs in cases.items():
        failed = sum(status == "failed" for status, _ in runs)
        wrong, what = (failed, "false alarms") if name == "clean" else (len(runs) - failed, "missed")
        repeats = np.mean([m["train"]["duplicates"] for _, m in runs])
        overlap = np.mean([(m["overlap_exact"] + m["overlap_near"]) / m["eval"]["rows"] for _, m in runs])
        print(
            f"{name:24s} failed {failed}/{len(runs)}, {what} {wrong} (95% upper bound "
            f"{upper95(wrong, len(runs)):.1%}); mean train repeats {repeats:.1f}, mean eval overlap {overlap:.1%}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    idx = sub.add_parser("index", help="memory and speed of the n-gram index")
    idx.add_argument("--sequences", type=int, default=10000)
    idx.add_argument("--length", type=int, default=64)
    idx.add_argument("--ngram", type=int, default=13)
    idx.add_argument("--error-rate", type=float, default=1e-3)
    smp = sub.add_parser("sampling", help="verdicts on random-window data over seeds")
    smp.add_argument("--seeds", type=int, default=100)
    smp.add_argument("--corpus-chars", type=int, default=48_000)
    smp.add_argument("--length", type=int, default=64)
    smp.add_argument("--train", type=int, default=1600)
    smp.add_argument("--eval", type=int, default=320)
    args = ap.parse_args()
    index(args) if args.what == "index" else sampling(args)


if __name__ == "__main__":
    main()
