"""The leak check through ``pytest --llmcheck``: growth caught with what accumulates and who holds
it, clean models (a transformers GPT-2 among them) passing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from model_sources import CLEAN, variant

# Imported here, not first inside a test: pytester's in-process runs restore sys.modules after
# each run, and numpy's C extension cannot be imported a second time into one process.
pytest.importorskip("scipy.stats")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers inherit this: on a shared 2-core machine, OpenMP's spinning threads make a tiny
    model's step 50x slower (13 ms vs 774 ms measured under load 7); results do not change."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# Keeps every block's input alive in a list: 2 blocks x float32[2, 16, 32] = 8 KiB per forward.
APPENDS_ACTIVATIONS = variant(
    "        q, k, v = self.qkv(",
    "        self.seen.append(x.detach())\n        q, k, v = self.qkv(",
    variant("        self.drop = nn.Dropout(0.1)\n", "        self.drop = nn.Dropout(0.1)\n        self.seen = []\n"),
)

# A running statistic that is never detached: each step's graph (and the activation its pow
# saved, 4 KiB) stays reachable from self.total.
RUNNING_SUM = variant(
    "        for block in self.blocks:",
    "        self.total = self.total + x.pow(2).mean()\n        for block in self.blocks:",
    variant(
        "        self.head = nn.Linear(D, V, bias=False)\n",
        "        self.head = nn.Linear(D, V, bias=False)\n        self.total = torch.zeros(())\n",
    ),
)

GPT2 = (
    CLEAN
    + """

@llmcheck.model
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)
"""
)

FAST = ("-k", "leak", "--llmcheck-set", "leak.iterations=30", "--llmcheck-set", "leak.census_points=4")


def test_activations_appended_to_a_list_fail_the_leak_check_with_the_list_named(run_llmcheck):
    result = run_llmcheck(APPENDS_ACTIVATIONS, *FAST)
    r = result.by_check["leak"]
    assert r["status"] == "failed", r["message"]
    for phase in ("train", "inference"):
        assert f"{phase} steps leak: malloc heap in use +" in r["message"]
        trend = r["metrics"]["phases"][phase]["trends"]["heap"]
        assert 7 * 1024 < trend["slope"] < 10 * 1024 and trend["low"] > 0  # 8 KiB kept per forward
    assert "accumulating: +60 x float32[2, 16, 32]" in r["message"]  # 2 blocks x 30 iterations
    assert "held by a list in attribute seen of module blocks." in r["message"]
    assert len(r["samples"]["train_heap_bytes"]) == 30  # the per-iteration curve, for the report
    assert r["samples"]["train_live_tensors"] == sorted(r["samples"]["train_live_tensors"])


def test_a_running_sum_that_keeps_the_autograd_graph_fails_the_leak_check(run_llmcheck):
    result = run_llmcheck(RUNNING_SUM, *FAST)
    r = result.by_check["leak"]
    assert r["status"] == "failed", r["message"]
    assert "train steps leak:" in r["message"] and "inference steps leak" not in r["message"]
    slope = r["metrics"]["phases"]["train"]["trends"]["heap"]["slope"]
    assert 2 * 1024 < slope < 16 * 1024  # a few KiB per step
    assert "autograd graph kept alive after the step: float32[] (AddBackward0" in r["message"]
    assert "held by attribute total of module <root> (TinyLM)" in r["message"]


def test_clean_models_including_a_transformers_gpt2_pass_the_leak_check(run_llmcheck):
    pytest.importorskip("transformers")
    result = run_llmcheck(GPT2, "-k", "leak", "--llmcheck-set", "leak.iterations=40")
    records = {r["model"]: r for r in result.report["results"] if r["check"] == "leak"}
    assert set(records) == {"tiny", "gpt2"}
    for model, r in records.items():
        assert r["status"] == "passed", f"{model}: {r['message']}"
        assert "train: no growth over 40 iterations" in r["message"]
        assert "inference: no growth over 40 iterations" in r["message"]


def _params(**overrides):
    from llmcheck.checks.leak.check import CHECK

    values = {k: p.default for k, p in CHECK.params.items()}
    values.update(overrides)
    return SimpleNamespace(**values)


def _phase(values: list[float]) -> dict:
    from llmcheck.checks.leak.evidence import trends

    return {
        "judged": ["heap"],
        "trends": {"heap": trends(values, 0.99)},
        "census_trend": {"all_deltas_positive": False, "bytes_per_iteration": 0.0},
    }


def test_a_one_off_step_in_memory_is_not_judged_a_leak():
    from llmcheck.checks.leak.evidence import leaking

    step = [0.0] * 30 + [200_000.0] * 30  # a cache filled once, half-way through the run
    assert leaking(_phase(step), _params()) == []
    steady = [float(2048 * i) for i in range(60)]
    assert leaking(_phase(steady), _params()) == ["heap"]
    below = [float(512 * i) for i in range(60)]  # real, but under the 1 KiB threshold
    assert leaking(_phase(below), _params()) == []


# Activations kept in a module-level list of the model file, which exists from the file's import on.
GLOBAL_LIST = variant(
    "        q, k, v = self.qkv(",
    "        SEEN.append(x.detach())\n        q, k, v = self.qkv(",
    variant("class Block(nn.Module):", "SEEN = []\n\n\nclass Block(nn.Module):"),
)


def test_a_module_level_list_is_named_even_after_other_checks_ran_in_the_worker(run_llmcheck):
    """The worker freezes what each check leaves alive (gc.freeze: a full collection then skips
    it), the model file's globals among them once a check ran before the leak check; the holder
    search must still see them."""
    result = run_llmcheck(GLOBAL_LIST, *FAST[2:], "-k", "eval or leak")
    assert [r["check"] for r in result.report["results"]] == ["eval", "leak"]  # eval ran first
    r = result.by_check["leak"]
    assert r["status"] == "failed", r["message"]
    assert "held by a list in global SEEN of model.py" in r["message"], r["message"]
