"""The CUDA paths of the fault checks: a leak seen in ``torch.cuda.memory_allocated`` with a
memory snapshot attached, and the largest batch found through real CUDA out-of-memory errors
(after which the worker is replaced). Skipped without a CUDA device."""

from __future__ import annotations

import pytest
from model_sources import variant

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)

CUDA_LEAK = variant(
    "        q, k, v = self.qkv(",
    "        self.seen.append(x.detach())\n        q, k, v = self.qkv(",
    variant("        self.drop = nn.Dropout(0.1)\n", "        self.drop = nn.Dropout(0.1)\n        self.seen = []\n"),
)

# Each sample needs 8 GiB of device memory: the search meets real CUDA out-of-memory errors.
EIGHT_GIB_PER_SAMPLE = variant(
    "    def forward(self, idx):\n        x = self.tok(idx)",
    "    def forward(self, idx):\n"
    "        scratch = torch.empty(idx.shape[0] * 8 * 2**30, dtype=torch.uint8, device=idx.device)\n"
    "        x = self.tok(idx) + scratch[:1].float()",
)


def test_a_cuda_leak_is_caught_in_memory_allocated_with_a_snapshot(run_llmcheck):
    result = run_llmcheck(CUDA_LEAK, "-k", "leak", "--llmcheck-device", "cuda", "--llmcheck-set", "leak.iterations=30")
    r = result.by_check["leak"]
    assert r["status"] == "failed", r["message"]
    assert "CUDA allocated +" in r["message"]
    assert "float32[2, 16, 32] cuda:0" in r["message"]
    slope = r["metrics"]["phases"]["inference"]["trends"]["cuda_allocated"]["slope"]
    assert slope == pytest.approx(8192, rel=0.05)  # memory_allocated is exact, in 512-byte blocks
    assert "train_cuda_memory_snapshot" in r["artifacts"]
    assert len(r["samples"]["train_device_used_bytes"]) == 30


def test_the_largest_batch_is_found_through_real_cuda_out_of_memory_errors(run_llmcheck):
    result = run_llmcheck(
        EIGHT_GIB_PER_SAMPLE,
        "-k",
        "memory or resume",
        "--llmcheck-device",
        "cuda",
        "--llmcheck-set",
        "memory.batch_sizes=[1]",
        "--llmcheck-set",
        "memory.seq_lens=[8]",
        "--llmcheck-set",
        "memory.mode=inference",
    )
    memory = result.by_check["memory"]
    assert memory["status"] == "passed", memory["message"]
    total = torch.cuda.mem_get_info()[1]
    best = memory["metrics"]["max_batch_size"]
    assert 1 <= best <= total // (8 * 2**30)
    assert memory["metrics"]["first_failure"]["batch_size"] == best + 1
    assert "OutOfMemoryError" in memory["metrics"]["first_failure"]["oom"]
    # The worker that met the OOM was replaced: the model's next check ran in a fresh one.
    assert result.by_check["resume"]["status"] in ("passed", "skipped"), result.by_check["resume"]["message"]
