"""The memory check through ``pytest --llmcheck``: an out-of-memory error is a data point of the
search for the largest batch, not the end of the run; a sweep size that does not fit fails."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from model_sources import variant

# Raises the error CUDA's allocator raises, for every batch above 12.
OOM_ABOVE_12 = (
    variant(
        "    def forward(self, idx):\n        x = self.tok(idx)",
        "    def forward(self, idx):\n"
        "        if idx.shape[0] > 12:\n"
        "            raise torch.OutOfMemoryError(f'CUDA out of memory. Tried to allocate {idx.shape[0]} GiB')\n"
        "        x = self.tok(idx)",
    )
    + """

# Inference steps here (the OOM is raised in the forward either way): no optimizer, a faster worker.
@llmcheck.model(
    causal=True, vocab_size=V, max_seq_len=T, checks={"memory": {"batch_sizes": [4, 16], "mode": "inference"}}
)
def sweeps_too_far():
    return TinyLM()
"""
)

# batch_sizes stays per model: the command line would override sweeps_too_far's own setting.
SMALL = ("-k", "memory", "--llmcheck-set", "memory.seq_lens=[8]", "--llmcheck-set", "memory.max_batch_size=64")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers inherit this: OpenMP's spinning threads slow a tiny model 50x on a busy 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_a_model_that_runs_out_of_memory_above_batch_12_reports_12(run_llmcheck):
    result = run_llmcheck(OOM_ABOVE_12, *SMALL)
    records = {r["model"]: r for r in result.report["results"] if r["check"] == "memory"}
    fits, sweep = records["tiny"], records["sweeps_too_far"]

    assert fits["status"] == "passed", fits["message"]
    assert fits["metrics"]["max_batch_size"] == 12
    assert [r["batch_size"] for r in fits["metrics"]["search"]] == [1, 2, 4, 8, 16, 12, 14, 13]
    assert "largest batch that fits: 12 at seq_len 8 (train step" in fits["message"]
    assert "batch 13 x 8 raised OutOfMemoryError: CUDA out of memory. Tried to allocate 13 GiB" in fits["message"]
    assert all(r["peak_bytes"] > 0 for r in fits["metrics"]["sweep"])  # peak RSS per configuration

    assert sweep["status"] == "failed", sweep["message"]
    assert sweep["metrics"]["mode"] == "inference"
    assert sweep["message"].startswith("batch 16 x 8 raised OutOfMemoryError: CUDA out of memory")
    assert sweep["metrics"]["max_batch_size"] == 12


class FakeRunner:
    """Fits up to ``largest``; records the sizes tried."""

    def __init__(self, largest: int):
        self.largest, self.tried = largest, []

    def measure(self, bs: int, seq_len: int) -> dict:
        self.tried.append(bs)
        return {"batch_size": bs, "seq_len": seq_len, "fits": bs <= self.largest}


@pytest.mark.parametrize("largest, cap, expected", [(37, 256, 37), (1, 256, 1), (0, 256, 0), (500, 256, 256)])
def test_the_largest_batch_is_found_by_doubling_then_bisection(largest, cap, expected):
    from llmcheck.checks.memory import largest_batch

    runner = FakeRunner(largest)
    found, tried = largest_batch(runner, 16, cap)
    assert found == expected
    assert len(tried) <= 2 * max(cap, 2).bit_length()


def test_memory_judge_fails_below_min_batch_size():
    from llmcheck.checks.memory import judge

    metrics = {
        "mode": "train",
        "limit_bytes": 2**30,
        "limit_source": "budget_mb = 1024",
        "sweep": [],
        "search_seq_len": 64,
        "max_batch_size": 3,
        "first_failure": None,
        "capped": False,
    }
    params = SimpleNamespace(min_batch_size=8, max_batch_size=256)
    verdict = judge(metrics, params)
    assert verdict.status == "failed"
    assert verdict.message.startswith("largest batch that fits at seq_len 64 is 3 < min_batch_size 8")
