"""The data check through ``pytest --llmcheck``: an eval split that copies part of train, duplicates,
a shifted distribution and out-of-vocabulary ids each fail with their figures; clean splits pass,
and the data-reading checks skip with the reason when the model file declares no data.

Data drawn the nanoGPT way (random windows of one character corpus, with replacement) is judged
against what that sampling predicts: its chance repeats and shifted overlaps pass, an eval split
drawn from the training text and a loader that repeats batches fail. The pieces under that
judgement (n-gram hashing, shifted-window detection, Poisson and binomial bounds, the judge) are
tested directly, without a worker.
"""

from __future__ import annotations

import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
from data_sources import WITH_DATA
from model_sources import CLEAN, variant

SPLITS = "TRAIN, EVAL = walk(64, seed=1), walk(32, seed=2)"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers inherit it: no BLAS threads spinning on 2 cores


def test_clean_data_passes_data_training_input_pipeline_and_generation(run_llmcheck):
    result = run_llmcheck(
        WITH_DATA,
        "-k",
        "data or training or input-pipeline or generation",
        "--llmcheck-set",
        "training.steps=20",
        "--llmcheck-set",
        "input-pipeline.batches=4",
    )
    found = result.by_check
    assert {c: r["status"] for c, r in found.items()} == dict.fromkeys(
        ("data", "training", "input-pipeline", "generation"), "passed"
    ), {c: r["message"] for c, r in found.items()}
    message = found["data"]["message"]
    assert "train: 0 of 64 sequences are exact duplicates (0.0%, limit 1.0%) (rule: rate limit, not random" in message
    assert (
        "0 of 32 eval sequences (0.0%) duplicate training data (0 exact, 0 near: >= 50% of their 16-grams seen in "
        "train); train against itself: 0 of 32 odd rows near duplicates of the even ones"
    ) in message
    assert "beyond chance: 0.0% (limit 0.0%)" in message
    assert "length distribution shift train -> eval: JSD 0.0000 bits (limit 0.1)" in message
    assert "token distribution shift train -> eval: JSD 0.0" in message and "(limit 0.05; train halves: 0.0" in message
    assert "train loader" in found["input-pipeline"]["message"] and "eval loader" in found["input-pipeline"]["message"]


def test_the_data_reading_checks_skip_with_the_reason_without_data(run_llmcheck):
    found = run_llmcheck(CLEAN, "-k", "data or training or input-pipeline").by_check
    assert {c: r["status"] for c, r in found.items()} == dict.fromkeys(
        ("data", "training", "input-pipeline"), "skipped"
    )
    assert "no @llmcheck.train_data in the model file" in found["data"]["message"]
    assert "no @llmcheck.train_data or @llmcheck.eval_data" in found["input-pipeline"]["message"]


LEAK = variant(
    SPLITS,
    """TRAIN = walk(64, seed=1)
near = TRAIN[8:16].clone()
near[:, -1] = (near[:, -1] + 7) % V  # the same text with its last token changed
EVAL = torch.cat([near, TRAIN[:8], walk(16, seed=2)])  # 8 near and 8 exact copies of train""",
    WITH_DATA,
)


def test_an_eval_split_that_copies_part_of_train_fails_data_with_the_examples(run_llmcheck):
    found = run_llmcheck(LEAK, "-k", "data").by_check["data"]
    assert found["status"] == "failed"
    message = found["message"]
    assert (
        "eval split overlaps train: 16 of 32 eval sequences (50.0%) duplicate training data "
        "(8 exact, 8 near: >= 50% of their 16-grams seen in train); train against itself: 0 of 32 odd rows"
    ) in message
    assert "up to 0 by chance at p = 0.0001; beyond chance: 50.0% (limit 0.0%)" in message
    assert "eval #0 ~ train #8 (94% of its 16-grams seen in train, 94% in train #8, the closest) tokens [" in message
    examples = found["metrics"]["overlap_examples"]
    assert [(e["eval_row"], e["train_row"], e["kind"]) for e in examples] == [
        (0, 8, "near"),
        (1, 9, "near"),
        (2, 10, "near"),
    ]
    assert found["metrics"]["bloom"]["bytes"] > 0


MESSY = variant(
    SPLITS,
    """TRAIN = torch.cat([walk(48, seed=1), walk(1, seed=3).repeat(16, 1)])  # one row 16 times
EVAL = walk(32, seed=2) % 16  # only ids 0-15: a different distribution
EVAL[3, 5] = V + 3  # an id past the vocabulary
MASK = torch.ones_like(EVAL)
MASK[:, 16:] = 0  # right padding: eval sequences are half as long""",
    WITH_DATA,
)
MESSY = variant(
    "    yield from EVAL.split(8)",
    "    for ids, mask in zip(EVAL.split(8), MASK.split(8)):\n        yield {'input_ids': ids, 'attention_mask': mask}",
    MESSY,
)


def test_duplicates_shift_and_out_of_vocabulary_ids_fail_data_with_their_figures(run_llmcheck):
    found = run_llmcheck(MESSY, "-k", "data").by_check["data"]
    assert found["status"] == "failed"
    message = found["message"]
    assert "train: 15 of 64 sequences are exact duplicates (23.4%, limit 1.0%), first: #49 = #48" in message
    assert "eval: 1 token id(s) outside the vocabulary [0, 64); first: id 67 in sequence #3 at position 5" in message
    assert "length distribution shift train -> eval: JSD 1.0000 bits (limit 0.1)" in message
    assert found["metrics"]["token_jsd"] > 0.05 and "token distribution shift train -> eval: JSD 0." in message
    assert found["metrics"]["eval"]["lengths"] == {"16": 32}


def test_data_hooks_that_yield_strings_or_nothing_are_contract_errors(tmp_path):
    from llmcheck.target.batches import batches
    from llmcheck.target.model import ContractError, Target, load_declarations

    path = tmp_path / "hooks_model.py"
    path.write_text(
        CLEAN + "\n\n@llmcheck.train_data\ndef lines():\n    return iter(['the text, not token ids'])\n"
        "\n\n@llmcheck.eval_data\ndef held_out():\n    return iter([])\n"
    )
    models, hooks = load_declarations(path)
    target = Target(models[0], hooks["tiny"], {})
    with pytest.raises(ContractError, match=r"@llmcheck.train_data lines yielded str as batch 0; expected a tensor"):
        list(batches(target, "train"))
    with pytest.raises(ContractError, match=r"@llmcheck.eval_data held_out yielded no batch"):
        list(batches(target, "eval"))
    assert len(list(batches(target, "train", limit=0))) == 0


CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus.txt"
TEXT_LENGTH, SEQ = 48_000, 64  # a 43k-character training part, as in the nanoGPT report of issue 14
WINDOWS = (
    variant("V, D, T = 64, 32, 32", f"V, D, T = 256, 32, {SEQ}")
    + f'''
from pathlib import Path

TEXT = torch.frombuffer(bytearray(Path({str(CORPUS)!r}).read_bytes()[:{TEXT_LENGTH}]), dtype=torch.uint8).long()
CUT = int(0.9 * len(TEXT))  # the last 10% is held out


def get_batch(part, generator, batch_size=16):
    """nanoGPT's get_batch: random T-character windows of one stream, drawn with replacement."""
    ix = torch.randint(len(part) - T, (batch_size,), generator=generator)
    return torch.stack([part[i : i + T] for i in ix])


@llmcheck.train_data
def train_batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(100):  # 1600 windows
        yield get_batch(TEXT[:CUT], g)


@llmcheck.eval_data
def eval_batches():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):  # 320 windows
        yield get_batch(TEXT[CUT:], g)
'''
)


def test_random_windows_of_a_character_corpus_pass_data_with_their_chance_repeats(run_llmcheck):
    found = run_llmcheck(WINDOWS, "-k", "data").by_check["data"]
    message, metrics = found["message"], found["metrics"]
    assert found["status"] == "passed", message
    train_part = int(0.9 * TEXT_LENGTH)
    windows = train_part - SEQ  # start positions get_batch draws from
    repeats = int(re.search(r"train: (\d+) of 1600 sequences are exact duplicates \(", message)[1])
    assert repeats > 16  # more than the flat 1% limit that failed this data before
    rule = re.search(
        r"rule: random 64-token windows drawn with replacement: (\d+) shifted overlaps of >= 32 tokens among "
        r"(\d+) distinct rows put the population at ~([\d,]+) windows, so 1600 draws repeat ([\d.]+) by chance, "
        r"bound (\d+) at p = 0.0001, beyond chance: ([\d.]+) \(([\d.]+)%, limit 1.0%\)",
        message,
    )
    assert rule, message
    shifted, distinct, population, expected, bound = (
        int(rule[1]),
        int(rule[2]),
        int(rule[3].replace(",", "")),
        float(rule[4]),
        int(rule[5]),
    )
    assert distinct == 1600 - repeats and shifted == metrics["train"]["windows"]["shifted"] > 1000
    assert abs(population - windows) < 0.1 * windows  # an honest estimate of the population
    assert abs(expected - 1600**2 / (2 * windows)) < 4 and repeats <= bound
    assert "eval: " in message and "320 draws repeat" in message  # eval windows: the same rule
    assert (
        "0 of 320 eval sequences (0.0%) duplicate training data (0 exact, 0 near: >= 50% of their 32-grams" in message
    )
    assert metrics["ngram"] == 32 and metrics["baseline"]["left_out"] > 0


def test_eval_windows_drawn_from_the_training_text_fail_data_naming_a_pair(run_llmcheck):
    leaky = variant("get_batch(TEXT[CUT:], g)", "get_batch(TEXT[:CUT], g)", WINDOWS)
    found = run_llmcheck(leaky, "-k", "data").by_check["data"]
    assert found["status"] == "failed"
    message = found["message"]
    overlap = re.search(r"eval split overlaps train: (\d+) of 320 eval sequences \(", message)
    assert overlap and int(overlap[1]) > 100, message
    assert "train against itself: 0 of " in message and "up to 0 by chance" in message
    first = found["metrics"]["overlap_examples"][0]
    named = f"eval #{first['eval_row']} {'=' if first['kind'] == 'exact' else '~'} train #{first['train_row']} ("
    assert first["train_row"] >= 0 and f"; first: {named}" in message
    assert message.startswith("eval split overlaps train: ")  # the only problem: its chance repeats pass


def test_a_loader_that_repeats_its_batches_fails_data_beyond_the_chance_repeats(run_llmcheck):
    stuck = variant(
        "    for _ in range(100):  # 1600 windows\n        yield get_batch(TEXT[:CUT], g)",
        "    first = get_batch(TEXT[:CUT], g)\n    for _ in range(10):  # the first batch ten times\n"
        "        yield first\n    for _ in range(90):\n        yield get_batch(TEXT[:CUT], g)",
        WINDOWS,
    )
    found = run_llmcheck(stuck, "-k", "data").by_check["data"]
    assert found["status"] == "failed"
    message = found["message"]
    repeats = int(re.search(r"train: (\d+) of 1600 sequences are exact duplicates \(", message)[1])
    assert repeats >= 144  # rows 16-159 repeat rows 0-15
    assert "first: #16 = #0, " in message and re.search(r"most: #\d+ x1[01] \(rule: random 64-token windows", message)
    beyond = re.search(r"repeat ([\d.]+) by chance, bound (\d+) at p = 0.0001, beyond chance: ([\d.]+)", message)
    assert float(beyond[1]) < 40 and repeats > int(beyond[2]) and float(beyond[3]) > 16


def defaults(**changes):
    from llmcheck.checks.data.check import CHECK

    return types.SimpleNamespace(**{**{k: v.default for k, v in CHECK.params.items()}, **changes})


def reference_hash(window) -> int:
    """The n-gram hash by its definition, in Python integers: Horner's rule, then splitmix64's finaliser."""
    h = 0
    for x in window:
        h = (h * 1_000_003 + int(x) + 1) % 2**64
    h ^= h >> 31
    h = h * 0xBF58476D1CE4E5B9 % 2**64
    h ^= h >> 27
    return h - 2**64 if h >= 2**63 else h


def test_rolling_ngram_hashes_equal_the_polynomial_hash_of_each_window():
    from llmcheck.checks.data.ngrams import ngram_hashes

    rows = np.random.default_rng(0).integers(0, 50257, (3, 40))
    for n in (1, 13, 40):
        windows = [rows[0][i : i + n] for i in range(40 - n + 1)]
        assert ngram_hashes(rows[0], n).tolist() == [reference_hash(w) for w in windows]
    assert (ngram_hashes(rows, 13) == np.stack([ngram_hashes(r, 13) for r in rows])).all()  # a block, row by row
    assert len(set(ngram_hashes(rows[0], 13).tolist())) == 28  # 28 different windows, 28 different hashes
    assert ngram_hashes(rows[0], 41).shape == (0,)


def test_shifted_windows_of_one_stream_are_paired_and_other_rows_are_not():
    from llmcheck.checks.data.windows import shifted_pairs

    stream = np.random.default_rng(1).integers(0, 256, 20_000)
    starts = [0, 10, 100, 5000, 5020, 9000, 9040]
    rows = [stream[s : s + 64] for s in starts]
    assert sorted(shifted_pairs(rows, 32)) == [(0, 1, 10), (3, 4, 20)]  # 9000/9040 overlap by 24 < 32 tokens
    assert (5, 6, 40) in shifted_pairs(rows, 16)
    flat = [np.r_[np.full(63, 7), i] for i in range(100)]  # the same token at every offset: not windows
    assert shifted_pairs(flat, 32) is None


def test_the_automatic_ngram_is_long_for_characters_and_short_for_subwords():
    from collections import Counter

    from llmcheck.checks.data.ngrams import resolve_ngram

    assert resolve_ngram(0, 256, Counter({256: 10})) == 50  # bytes: 50 characters, about eight words
    assert resolve_ngram(0, 65, Counter({64: 10})) == 32  # at most half a 64-character row
    assert resolve_ngram(0, 50257, Counter({1024: 10})) == 13  # GPT-2 subwords: 13, as contamination studies
    assert resolve_ngram(7, 256, Counter({256: 10})) == 7  # set by the user: kept


def poisson_tail(q: int, mean: float) -> float:
    """P(X > q) for X ~ Poisson(mean), by the plain sum (exp(-mean) stays above the float minimum here)."""
    pmf, below = math.exp(-mean), 0.0
    for i in range(q + 1):
        below += pmf
        pmf *= mean / (i + 1)
    return 1 - below


def binomial_tail(q: int, n: int, rate: float) -> float:
    """P(X > q) for X ~ Binomial(n, rate), term by term."""
    return sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(q + 1, n + 1))


def test_poisson_and_binomial_bounds_are_the_smallest_that_hold():
    from llmcheck.stats.counts import binomial_upper_quantile, poisson_cdf, poisson_mean_upper, poisson_upper_quantile

    for mean in (0.5, 4.6, 29.5, 300.0):
        for alpha in (0.05, 1e-4):
            q = poisson_upper_quantile(mean, alpha)
            assert poisson_tail(q, mean) <= alpha < poisson_tail(q - 1, mean)
    assert poisson_upper_quantile(0.0, 1e-4) == 0
    assert poisson_mean_upper(0, 0.05) == pytest.approx(-math.log(0.05), rel=1e-6)  # the closed form for 0 seen
    assert poisson_cdf(30, poisson_mean_upper(30, 1e-4)) == pytest.approx(1e-4, rel=1e-4)
    for n, rate, alpha in ((320, 0.2, 1e-4), (32, 0.03, 0.05)):
        q = binomial_upper_quantile(n, rate, alpha)
        assert binomial_tail(q, n, rate) <= alpha < binomial_tail(q - 1, n, rate)
    assert binomial_upper_quantile(320, 0.0, 1e-4) == 0


def test_expected_repeats_are_those_of_drawing_with_replacement():
    import itertools

    from llmcheck.checks.data.sampling import expected_repeats, population

    draws = list(itertools.product(range(4), repeat=3))  # every way to draw 3 of 4 windows
    assert expected_repeats(3, 4) == pytest.approx(sum(3 - len(set(d)) for d in draws) / len(draws))
    assert expected_repeats(1600, 43_136) == pytest.approx(1600**2 / (2 * 43_136), rel=0.02)  # the birthday count
    windows = {"distinct": 1570, "length": 64, "min_overlap": 32}
    assert population(windows, 1570 * 1569 * 32 / 43_136) == pytest.approx(43_136)


def split(rows: int, duplicates: int, shifted: int) -> dict:
    return {
        "rows": rows,
        "duplicates": duplicates,
        "repeated_contents": duplicates,
        "most_repeated": {"row": 3, "copies": 2},
        "first_duplicate": [40, 3],
        "oov": 0,
        "windows": {"distinct": rows - duplicates, "length": 64, "min_overlap": 32, "shifted": shifted},
    }


def test_the_judge_holds_repeats_to_sampling_for_random_windows_and_to_the_rate_otherwise():
    from llmcheck.checks.data.check import judge

    verdict = lambda s: judge({"vocab_size": 256, "ngram": 32, "train": s}, defaults())  # noqa: E731
    chance = verdict(split(1600, 36, 1850))  # the report of issue 14: 36 repeats from a 43k-character corpus
    assert chance.status == "passed" and "so 1600 draws repeat 29." in chance.message
    assert verdict(split(1600, 150, 1850)).status == "failed"  # 150 repeats: far beyond chance
    few = judge({"vocab_size": 256, "ngram": 32, "train": split(200, 15, 545)}, defaults())
    assert few.status == "passed" and "repeat 9.6 by chance, bound 26" in few.message  # 2.7% beyond: chance
    metrics = {"vocab_size": 256, "ngram": 32, "train": split(1600, 100, 1850)}
    allowed = judge(metrics, defaults(max_duplicate_rate=0.05))  # beyond the bound, within the allowed rate
    assert allowed.status == "passed" and "bound 59 at p = 0.0001, beyond chance: 67.6 (4.2%, limit 5.0%)" in (
        allowed.message
    )
    no_windows = verdict(split(1600, 36, 0))  # the same repeats among rows that are not windows of one stream
    assert no_windows.status == "failed"
    assert "(2.2%, limit 1.0%), first: #40 = #3" in no_windows.message
    assert "rule: rate limit, not random windows: no two of its 1564 distinct rows overlap as shifted windows" in (
        no_windows.message
    )
    assert verdict(split(1600, 10, 0)).status == "passed"
    chunks = verdict(split(1600, 36, 3))  # three shifted overlaps: a passage the text repeats, not windows
    assert chunks.status == "failed" and "only 3 pairs of its 1564 distinct rows overlap as shifted windows (< 10)" in (
        chunks.message
    )


def test_the_judge_holds_eval_overlap_to_the_train_against_itself_baseline():
    from llmcheck.checks.data.check import judge

    def verdict(hits: int, max_overlap: float = 0.0):
        m = {"vocab_size": 256, "ngram": 32, "train": split(1600, 0, 0), "eval": split(320, 0, 0)}
        m.update(overlap_exact=0, overlap_near=40, length_jsd=0.0, token_jsd=0.0, token_jsd_train_halves=0.0)
        m.update(baseline={"rows": 200, "hits": hits, "left_out": 0, "windows_known": True, "scale": 2.0})
        m["overlap_examples"] = [{"eval_row": 5, "train_row": 9, "kind": "near", "seen": 0.6, "closest_shared": 0.6}]
        for e in m["overlap_examples"]:
            e["tokens"] = [1, 2]
        return judge(m, defaults(max_overlap=max_overlap))

    common = verdict(hits=20)  # text that repeats itself: train halves find 10% of rows, 20% across all of train
    assert common.status == "passed" and "20 of 200 odd rows near duplicates" in common.message
    assert "20.0% scaled to all of train" in common.message
    clean_baseline = verdict(hits=0)  # the same 40 of 320 where train does not repeat itself
    assert clean_baseline.status == "failed"
    assert "first: eval #5 ~ train #9 (60% of its 32-grams seen in train, 60% in train #9" in clean_baseline.message
    assert verdict(hits=0, max_overlap=0.2).status == "passed"  # 12.5% beyond chance, 20% allowed
    near_baseline = verdict(hits=7)  # 7% across train: 40 of 320 is 5.5% more, within chance (up to 41)
    assert near_baseline.status == "passed" and "up to 41 by chance at p = 0.0001; beyond chance: 5.5%" in (
        near_baseline.message
    )
