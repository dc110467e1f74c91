"""The training check's live mode through ``pytest --llmcheck``: a clean model learns and passes,
and each judgement fires on a run built to trip it, with its numbers in the message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from data_sources import WITH_DATA
from model_sources import variant

SHORT = ("--llmcheck-set", "training.steps=30", "--llmcheck-set", "training.eval_every=10")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers inherit it: no BLAS threads spinning on 2 cores


def training(run_llmcheck, source, *args):
    result = run_llmcheck(source, "-k", "training", *SHORT, *args)
    return result.by_check["training"]


def test_a_clean_model_learns_and_passes_training_with_its_curves_recorded(run_llmcheck):
    found = training(run_llmcheck, WITH_DATA)
    assert found["status"] == "passed", found["message"]
    assert "training run: 30 steps" in found["message"] and "drop" in found["message"]
    assert "0 loss spike(s) > 2x the median" in found["message"]
    assert "gradients clipped to total norm 1 on " in found["message"]
    assert len(found["samples"]["grad_norm"]) == 30 and found["metrics"]["max_grad_norm"] == 1.0
    assert len(found["samples"]["loss"]) == 30 and len(found["samples"]["lr"]) == 30
    assert found["metrics"]["val_steps"] == [0, 10, 20, 30]
    losses = found["samples"]["loss"]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_a_learning_rate_that_diverges_fails_training(run_llmcheck):
    found = training(run_llmcheck, variant("lr=1e-2", "lr=1.0", WITH_DATA))
    assert found["status"] == "failed"
    assert "diverged: loss" in found["message"] and "x the first loss 4.1" in found["message"]
    assert "(step 0; limit 4x)" in found["message"] and "stopped early (loss exploded at step" in found["message"]


WARMUP_BUG = variant(
    "    return torch.optim.AdamW(model.parameters(), lr=1e-2)",
    "    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)\n"
    "    # the bug: warm-up divided by the total steps instead of the warm-up steps\n"
    "    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (5 * 100)))",
    WITH_DATA,
)


def test_a_warmup_that_never_reaches_its_peak_fails_training(run_llmcheck):
    found = training(
        run_llmcheck,
        WARMUP_BUG,
        "--llmcheck-set",
        "training.warmup_steps=5",
        "--llmcheck-set",
        "training.min_improvement=0",
    )
    assert found["status"] == "failed"
    assert (
        "warm-up does not reach its peak: lr at step 5 (warmup_steps = 5) is 0.00012 = 1.2% of the peak 0.01 "
        "(from param group 0 initial_lr) (need >= 99%)"
    ) in found["message"]


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_a_real_one_batch_spike_without_clipping_is_gone_with_the_default_clipping(pytester):
    # Found by benchmarks/false_alarms.py: with seed 1, the example's AdamW recipe at a 2e-3 peak
    # (its peak until then), unclipped, meets a batch at step 36 whose loss is 3x the running median
    # and whose gradient norm is ~50 (0.3-0.5 around it). The spike is real for a loop that does
    # not clip; a loop that clips at 1.0, as HF Trainer and nanoGPT do and as the check now does by
    # default, has none on that seed. (The example now peaks at 1e-3: no spike on 8 seeds either way.)
    shutil.copytree(EXAMPLES / "data", pytester.path / "data")
    shutil.copy(EXAMPLES / "tiny_gpt.py", pytester.path / "tiny_gpt.py")
    source = (EXAMPLES / "tiny_gpt_train.py").read_text()
    assert "PEAK_LR = 20, 2000, 1e-3" in source
    (pytester.path / "recipe.py").write_text(source.replace("PEAK_LR = 20, 2000, 1e-3", "PEAK_LR = 20, 2000, 2e-3"))
    args = ("--llmcheck", "recipe.py", "-p", "no:cacheprovider", "-k", "text and training")
    args += ("--llmcheck-set", "seed=1", "--llmcheck-set", "training.steps=40", "--llmcheck-json")
    pytester.runpytest(*args, "clipped.json")
    clipped = json.loads((pytester.path / "clipped.json").read_text())["results"][0]
    assert clipped["status"] == "passed", clipped["message"]
    assert (
        "gradients clipped to total norm 1 on " in clipped["message"] and " of 40 steps (largest " in clipped["message"]
    )
    assert len(clipped["samples"]["grad_norm"]) == 40
    pytester.runpytest(*args, "unclipped.json", "--llmcheck-set", "training.max_grad_norm=0")
    unclipped = json.loads((pytester.path / "unclipped.json").read_text())["results"][0]
    assert unclipped["status"] == "failed"
    message = unclipped["message"]
    assert "1 loss spike(s) > 2x the median of the previous 10 steps (limit 0): step 36: " in message
    norm, median = message.split("step 36: ")[1].split("(gradient norm ")[1].split(")")[0].split(", median ")
    assert float(norm) > 20 and float(median) < 1
