"""The latency check through ``pytest --llmcheck``: one item per configuration, budgets per
configuration that pass and fail with numbers, invalid measurements that never pass, a slow step
measured as slower, prefill/TTFT/decode for a model with a cache, and the pytest-benchmark bridge.

Timing runs use one thread (``num_threads=1``): on a shared 2-core machine two OpenMP threads
wait on each other for whole scheduler slices. No test asserts a wall time except relative
comparisons that a 20 ms sleep decides.
"""

import json

from model_sources import CLEAN, variant

ONLY_LATENCY = (
    "-m",
    "performance",
    "--llmcheck-set",
    "throughput=false",
    "--llmcheck-set",
    "amp=false",
    "--llmcheck-set",
    "latency.num_threads=1",
    "--llmcheck-set",
    "latency.processes=1",
    "-rA",
)
LOOSE = "'max_iqr_ratio': 100.0, 'min_valid_samples': 3"  # judge budgets even on a noisy shared machine

CACHED = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
import llmcheck

V, D, T = 64, 32, 32


class CachedLM(nn.Module):
    """One attention layer that returns (logits, (keys, values)) when use_cache is set."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.qkv, self.proj, self.head = nn.Linear(D, 3 * D), nn.Linear(D, D), nn.Linear(D, V)

    def forward(self, input_ids, past_key_values=None, use_cache=False):
        start = 0 if past_key_values is None else past_key_values[0].shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(start, start + input_ids.shape[1]))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if past_key_values is not None:
            k, v = torch.cat([past_key_values[0], k], 1), torch.cat([past_key_values[1], v], 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past_key_values is None)
        logits = self.head(x + self.proj(y))
        return (logits, (k, v)) if use_cache else logits


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def cached():
    return CachedLM()
'''


SLOW = """
import time


class SlowLM(TinyLM):
    def forward(self, idx):
        time.sleep(0.02)  # a deliberately slow step
        return super().forward(idx)


# At most 3 samples of >= 20 ms: too few, so even a 100 s budget must not pass. (A slow forward alone
# no longer gives too few: the plan raises max_time_s until min_valid_samples fit, llmcheck.measuring.budget.)
@llmcheck.model(
    causal=True,
    vocab_size=V,
    max_seq_len=T,
    checks={"latency": {"max_time_s": 0.05, "max_samples": 3, "max_p50_ms": 100000}},
)
def slow():
    return SlowLM()
"""


def _with_checks(source: str, model: str, checks: str) -> str:
    decl = f"@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)\ndef {model}():"
    return variant(
        decl, f"@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={checks})\ndef {model}():", source
    )


def _records(result, check="latency"):
    return {r["id"].split("::", 1)[1]: r for r in result.report["results"] if r["check"] == check}


def test_latency_items_are_one_per_configuration_and_land_in_pytest_benchmark(run_llmcheck, pytester):
    result = run_llmcheck(
        CLEAN,
        *ONLY_LATENCY,
        "--llmcheck-set",
        "latency.batch_sizes=[1, 2]",
        "--llmcheck-set",
        'latency.precisions=["float32", "bfloat16", "float16"]',
        "--benchmark-json",
        "bench.json",
    )
    ids = set(_records(result))
    assert {f"tiny::latency[bs={b}-sl=16-{p}-eager]" for b in (1, 2) for p in ("float32", "bfloat16", "float16")} == ids
    result.assert_outcomes(passed=4, skipped=4)  # 2 float16 items, and throughput and amp turned off
    result.stdout.fnmatch_lines(["*float16 autocast is measured on CUDA only (device = cpu)*"])
    rec = _records(result)["tiny::latency[bs=2-sl=16-bfloat16-eager]"]
    fwd = rec["metrics"]["forward"]
    assert rec["status"] == "passed" and "p50" in rec["message"] and "tokens/s" in rec["message"]
    assert len(rec["samples"]["forward_ms"]) == fwd["n"] and fwd["warmup"]["iters"] >= 3 and fwd["threads"] == 1
    assert rec["metrics"]["memory"]["peak_memory_mb"] > 0
    assert "no past_key_values" in rec["metrics"]["generation_note"]
    bench = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    entry = next(b for b in bench if b["fullname"] == "model.py::tiny::latency[bs=2-sl=16-bfloat16-eager]::forward")
    assert entry["stats"]["rounds"] == fwd["n"] and entry["param"] == "bs=2-sl=16-bfloat16-eager"
    assert abs(entry["stats"]["median"] * 1e3 - fwd["median_ms"]) < 1e-9
    assert len(bench) == 4  # one forward series per measured configuration


def test_budgets_per_configuration_pass_and_fail_with_the_observed_value_limit_and_configuration(run_llmcheck):
    budgets = "{'bs=1': {'max_p50_ms': 0.0001}, 'bs=2': {'max_p50_ms': 100000, 'max_peak_memory_mb': 1000000}}"
    source = _with_checks(
        CLEAN,
        "tiny",
        "{'latency': {'batch_sizes': [1, 2], 'precisions': ['float32'], " + LOOSE + f", 'budgets': {budgets}}}}}",
    )
    source = source.replace("checks={'latency'", "checks={'throughput': {'batch_sizes': [0]}, 'latency'")
    result = run_llmcheck(source, *ONLY_LATENCY)
    recs = _records(result)
    bad = _records(result, "throughput")  # a bad setting fails its own (single) item, not the session
    assert list(bad) == ["tiny::throughput"] and bad["tiny::throughput"]["status"] == "error"
    assert "throughput.batch_sizes[0] = 0" in bad["tiny::throughput"]["message"]
    failed, passed = recs["tiny::latency[bs=1-sl=16-float32-eager]"], recs["tiny::latency[bs=2-sl=16-float32-eager]"]
    assert failed["status"] == "failed", failed["message"]
    assert (
        "p50 latency" in failed["message"] and "ms > 0.0001 ms (batch 1, seq 16, float32, eager)" in failed["message"]
    )
    assert passed["status"] == "passed" and "max_p50_ms 100000" in passed["message"]
    result.stdout.fnmatch_lines(["*[[]failed[]] p50 latency * ms > 0.0001 ms (batch 1, seq 16, float32, eager)*"])


def test_a_slow_step_is_measured_as_slower_and_an_invalid_measurement_never_passes_a_budget(run_llmcheck):
    result = run_llmcheck(
        CLEAN + SLOW,
        *ONLY_LATENCY,
        "--llmcheck-set",
        "latency.batch_sizes=[1]",
        "--llmcheck-set",
        'latency.precisions=["float32"]',
    )
    recs = _records(result)
    fast, slow = recs["tiny::latency[bs=1-sl=16-float32-eager]"], recs["slow::latency[bs=1-sl=16-float32-eager]"]
    assert fast["status"] == "passed", fast["message"]
    assert slow["metrics"]["forward"]["median_ms"] >= 20.0  # time.sleep never returns early
    assert slow["metrics"]["forward"]["median_ms"] > fast["metrics"]["forward"]["median_ms"]
    assert slow["status"] == "failed" and not slow["metrics"]["forward"]["valid"]
    assert "p50 latency measurement is invalid (only" in slow["message"] and "cannot pass" in slow["message"]


def test_a_model_with_a_cache_gets_prefill_ttft_and_decode_and_decode_budgets_fail_with_numbers(run_llmcheck):
    source = _with_checks(
        CACHED.replace("def cached():", "def tiny():"),
        "tiny",
        "{'latency': {'batch_sizes': [2], 'precisions': ['float32'], 'decode_tokens': 4, "
        + LOOSE
        + ", 'min_decode_tokens_per_s': 1e12}}",
    )
    result = run_llmcheck(source, *ONLY_LATENCY)
    rec = _records(result)["tiny::latency[bs=2-sl=16-float32-eager]"]
    gen = rec["metrics"]["generation"]
    assert gen["cache_keyword"] == "past_key_values" and gen["prompt_len"] == 16 and gen["new_tokens"] == 4
    assert {"forward_ms", "prefill_ms", "ttft_ms", "decode_token_ms"} <= set(rec["samples"])
    assert gen["decode"]["n"] == len(rec["samples"]["decode_token_ms"]) and gen["decode"]["tokens_per_s"] > 0
    assert gen["ttft"]["median_ms"] > 0 and gen["prefill"]["tokens_per_s"] > 0
    assert rec["status"] == "failed" and "decode throughput" in rec["message"]
    assert "tokens/s < 1e+12 tokens/s (batch 2, seq 16, float32, eager)" in rec["message"]
