"""Memory and speed of the data check's n-gram index: rbloom's Bloom filter against a Python set.

    python benchmarks/data_check.py [--sequences 10000] [--length 64] [--ngram 13]

Builds the training-side index of ``--sequences`` random token rows the way llmcheck.checks.data.dedup does
(64-bit n-gram hashes), then queries as many unseen rows: reports bytes per n-gram for a set and
for the Bloom filter, the observed false-positive rate, and rows per second of each phase.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from rbloom import Bloom

from llmcheck.checks.data.dedup import ngram_hashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=10000)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--error-rate", type=float, default=1e-3)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
