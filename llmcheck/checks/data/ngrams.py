"""Hashes of token sequences and their n-grams for the `data` check, and the n-gram length it uses.

Rows are hashed whole (8-byte BLAKE2 digests: exact duplicates) and by n-gram (a 64-bit polynomial
rolling hash: near duplicates, shifted windows). Training n-grams go into a Bloom filter (rbloom: a
maintained Rust implementation with a set-like API; 2.25 bytes per n-gram as sized here at a 0.1%
false-positive rate, where a Python set of the same hashes costs 68-82: benchmarks/data_check.py).
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter

import numpy as np

_P = 1_000_003  # multiplier of the polynomial n-gram hash, mod 2**64
_P_INVERSE = pow(_P, -1, 2**64)  # _P is odd, so it has an inverse mod 2**64: the rolling hash needs it
CHARACTER_VOCAB = 256  # vocabularies this small are byte- or character-level
NGRAM_CHARACTERS, NGRAM_SUBWORDS = 50, 13  # automatic n-gram lengths (ngram = 0), see resolve_ngram


@functools.lru_cache(maxsize=16)
def _powers(base: int, size: int) -> np.ndarray:
    return np.array([pow(base, k, 2**64) for k in range(size)], dtype=np.uint64)


def _table(base: int, length: int) -> np.ndarray:
    return _powers(base, 1 << max(6, (length - 1).bit_length()))[:length]  # cached per power of two


def sequence_hash(row: np.ndarray) -> int:
    row = np.ascontiguousarray(row, dtype=np.int64)  # the same digest whatever dtype the row is stored in
    return int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little", signed=True)


def ngram_hashes(rows: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes (int64) of every n-gram along the last axis of ``rows`` (one row or a 2-D block).

    h_i = sum_k (x_{i+k} + 1) P^(n-1-k) mod 2**64, from prefix sums of x_u P^-u: O(length) for any n.
    """
    x = np.asarray(rows).astype(np.uint64) + np.uint64(1)
    length = x.shape[-1]
    if length < n:
        return np.empty(x.shape[:-1] + (0,), dtype=np.int64)
    prefix = np.zeros(x.shape[:-1] + (length + 1,), dtype=np.uint64)
    np.cumsum(x * _table(_P_INVERSE, length), axis=-1, dtype=np.uint64, out=prefix[..., 1:])  # wraps by design
    h = (prefix[..., n:] - prefix[..., :-n]) * _table(_P, length)[n - 1 :]
    h ^= h >> np.uint64(31)  # splitmix64 finaliser: spread the polynomial's low-entropy bits
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    return h.view(np.int64)


def resolve_ngram(ngram: int, vocab: int, lengths: Counter) -> int:
    """The n-gram length for near duplicates: ``ngram`` when set, else chosen from the vocabulary.

    Contamination studies count 13 words; a subword token is most of a word, so 13 tokens. A
    character is a sixth of an English word (with its space): 13 characters are two short words,
    shared by chance between any two texts, so a byte- or character-level vocabulary gets 50. At
    most half the median row length, so that a row has n-grams to compare.
    """
    if ngram:
        return ngram
    base = NGRAM_CHARACTERS if vocab <= CHARACTER_VOCAB else NGRAM_SUBWORDS
    median = sorted(lengths.elements())[sum(lengths.values()) // 2] if lengths else base
    return max(1, min(base, median // 2))


def new_bloom(rows: int, per_row: int, p):
    from rbloom import Bloom

    capacity = max(10_000, int(1.25 * rows * max(1, per_row)))
    return Bloom(capacity, p.bloom_error_rate), capacity


def seen_fraction(row: np.ndarray, n: int, bloom) -> tuple[float, list[int]]:
    """The fraction of ``row``'s distinct n-grams found in ``bloom`` (0 for a row shorter than n)."""
    grams = np.unique(ngram_hashes(row, n)).tolist()
    if bloom is None or not grams:
        return 0.0, grams
    return sum(g in bloom for g in grams) / len(grams), grams
