"""A worker's memory is bounded: a model that allocates without end is ``crashed`` with its RSS,
the limit and the peak once its process tree passes ``memory_limit``, and the session goes on."""

from __future__ import annotations

import re

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
