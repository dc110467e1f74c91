"""A worker's memory is bounded: a model that allocates without end is ``crashed`` with its RSS,
the limit and the peak once its process tree passes ``memory_limit``, and the session goes on."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from model_sources import variant

# Each eval-mode forward keeps 50 MB (touched, so resident) every 50 ms; stops at 2 GB so that a
# harness without the limit times out instead of exhausting the machine.
GREEDY = "import time\nHOARD = []\n" + variant(
    "    def forward(self, idx):\n",
    "    def forward(self, idx):\n"
    "        while not self.training and len(HOARD) < 40:\n"
    "            HOARD.append(torch.ones(50 * 2**20 // 4))\n"
    "            time.sleep(0.05)\n"
    "        if not self.training:\n"
    "            time.sleep(600)\n",
)
LIMIT = 800_000_000  # bytes: a worker with torch and the tiny model holds about 300 MB


def test_a_model_that_allocates_without_bound_is_crashed_at_the_limit_and_the_session_goes_on(run_llmcheck):
    result = run_llmcheck(
        GREEDY, "-k", "eval or resume", "--llmcheck-set", f"memory_limit={LIMIT}", "--llmcheck-timeout", "120"
    )
    record = result.by_check["eval"]
    assert record["status"] == "crashed", record["message"]
    expected = r"out of memory: RSS ([\d.]+) MiB > limit ([\d.]+) MiB \(memory_limit = 8e\+08 bytes\); peak "
    found = re.match(expected, record["message"])
    assert found, record["message"]
    assert float(found[1]) > float(found[2]) == round(LIMIT / 2**20, 1)
    fault = record["metrics"]["fault"]
    assert fault["kind"] == "out_of_memory" and fault["peak_bytes"] >= fault["rss_bytes"] > LIMIT
    assert record["duration_s"] < 100  # killed at the limit, not at the 120 s timeout
    assert result.by_check["resume"]["status"] == "passed"  # the next item ran in a fresh worker


def test_memory_limit_is_a_fraction_of_available_memory_or_bytes():
    from llmcheck.isolation.watchdog import limit_bytes

    assert limit_bytes(0.5, 8_000) == 4_000
    assert limit_bytes(3e9, 8_000) == 3_000_000_000
    assert limit_bytes(0, 8_000) is None


def test_the_memory_check_never_runs_a_size_predicted_past_the_workers_limit():
    from llmcheck.checks.memory import Runner, hard_limit, limit, run_cap

    mib = 2**20
    t = SimpleNamespace(device=SimpleNamespace(type="cpu"), settings={"memory_limit_bytes": 1000 * mib})
    assert limit(t, SimpleNamespace(budget_mb=0.0)) == (900 * mib, "90% of the worker's memory_limit")
    assert limit(t, SimpleNamespace(budget_mb=5000.0))[0] == 900 * mib  # a budget cannot lift the enforced limit
    runner = Runner.__new__(Runner)  # no model: the size must be refused before anything runs
    runner.ctx, runner.limit = SimpleNamespace(progress=lambda **_: None), 900 * mib
    runner.t = SimpleNamespace(device=t.device, settings=t.settings, batch=lambda **_: pytest.fail("the step ran"))
    runner.run_cap = run_cap(runner.limit, hard_limit(t))
    runner.last_fit = {"batch_size": 8, "seq_len": 16, "peak_bytes": 500 * mib, "step_bytes": 100 * mib}
    out = runner.measure(48, 16)  # predicted 400 + 6 x 100 = 1000 MiB: over the cap, under 1.5x the limit
    assert out["fits"] is False and out["peak_bytes"] is None and out["predicted_bytes"] > 900 * mib
