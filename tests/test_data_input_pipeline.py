"""The input-pipeline check through ``pytest --llmcheck``: loaders that sleep per batch make
training and inference input-bound, and the message carries the loader's settings and the
speed-up measured for a suggested setting. (A fast loader passing is in test_data_check.py.)"""

from __future__ import annotations

import pytest
from data_sources import WITH_DATA
from model_sources import variant

SLOW = variant(
    "@llmcheck.train_data\ndef train_batches():\n    yield from TRAIN.split(8)",
    '''
import time


class SlowRecords(torch.utils.data.Dataset):
    """Each record takes 100 ms to "decode": a loader that starves training."""

    def __len__(self):
        return len(TRAIN)

    def __getitem__(self, i):
        time.sleep(0.1)
        return TRAIN[i]


@llmcheck.train_data
def train_batches():
    return torch.utils.data.DataLoader(SlowRecords(), batch_size=4)''',
    WITH_DATA,
)
SLOW = variant(
    "    yield from EVAL.split(8)",
    "    for batch in EVAL.split(8):\n        time.sleep(0.3)\n        yield batch",
    SLOW,
)


def test_loaders_that_sleep_per_batch_make_training_and_inference_input_bound(run_llmcheck, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    found = run_llmcheck(
        SLOW,
        "-k",
        "input-pipeline",
        "--llmcheck-set",
        "input-pipeline.batches=4",
        "--llmcheck-set",
        "input-pipeline.steps=4",
    ).by_check["input-pipeline"]
    assert found["status"] == "failed", found["message"]
    message, train, evals = found["message"], found["metrics"]["train"], found["metrics"]["eval"]
    assert "training is input-bound: train loader " in message and "need >= 1x" in message
    assert (
        "loader: DataLoader(num_workers=0, pin_memory=False, prefetch_factor=None, persistent_workers=False, "
        "batch_size=4); suggested DataLoader(num_workers=2, pin_memory=False, prefetch_factor=2): measured "
    ) in message
    assert train["batches_per_s"] < train["model_steps_per_s"] and train["suggestion"]["speedup"] > 0
    assert "inference is input-bound: eval loader" in message
    assert (
        "loader: generator (a plain iterable" in message
        and "suggested a background thread prefetching 4 batches" in message
    )
    assert evals["batches_per_s"] < evals["model_steps_per_s"] and "ms prefetched" in evals["suggestion"]["detail"]
    assert len(found["samples"]["train_batch_s"]) == 4


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(
    not _cuda(), reason="needs a CUDA device: pinned memory is suggested, and batches copied, only on CUDA"
)
def test_on_cuda_the_suggested_loader_pins_memory(run_llmcheck):
    found = run_llmcheck(
        SLOW, "-k", "input-pipeline", "--llmcheck-set", "device=cuda", "--llmcheck-set", "input-pipeline.batches=4"
    ).by_check["input-pipeline"]
    assert found["status"] == "failed", found["message"]
    assert "suggested DataLoader(num_workers=2, pin_memory=True, prefetch_factor=2): measured " in found["message"]
