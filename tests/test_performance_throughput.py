"""The throughput check through ``pytest --llmcheck``: the batch-size sweep, the curve and its knee
on the example model, FLOPs per token counted against 2N, a per-configuration budget that fails
with numbers, and parallel inference in spawned processes."""

from pathlib import Path

from model_sources import CLEAN

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"
ONLY_THROUGHPUT = (
    "-m",
    "performance",
    "--llmcheck-set",
    "latency=false",
    "--llmcheck-set",
    "amp=false",
    "--llmcheck-set",
    "throughput.num_threads=1",
    "--llmcheck-set",
    "throughput.max_time_s=0.1",
    "-rA",
)


def _records(result):
    return {r["id"].split("::", 1)[1]: r for r in result.report["results"] if r["check"] == "throughput"}


def test_the_sweep_gives_a_curve_and_a_knee_on_the_example_and_budgets_fail_per_configuration(pytester):
    import json

    budgets = '{"bs=4-bfloat16": {"min_tokens_per_s": 1e12}}'
    pytester.runpytest(
        "--llmcheck",
        str(EXAMPLE),
        "-p",
        "no:cacheprovider",
        "--llmcheck-json",
        "r.json",
        *ONLY_THROUGHPUT,
        "-k",
        "tiny_gpt and not finetune",
        "--llmcheck-set",
        f"throughput.budgets={budgets}",
        "--llmcheck-set",
        "throughput.max_iqr_ratio=100",
        "--llmcheck-set",
        "throughput.min_valid_samples=3",
    )
    recs = {
        r["id"].split("::", 1)[1]: r
        for r in json.loads((pytester.path / "r.json").read_text())["results"]
        if r["check"] == "throughput"
    }
    fp32, bf16 = recs["tiny_gpt::throughput[float32-eager]"], recs["tiny_gpt::throughput[bfloat16-eager]"]
    assert fp32["status"] == "passed", fp32["message"]
    m = fp32["metrics"]
    assert [pt["batch_size"] for pt in m["points"]] == [1, 4, 16]
    assert all(pt["inference"]["tokens_per_s"] > 0 and pt["training"]["tokens_per_s"] > 0 for pt in m["points"])
    assert {f"{kind}_bs={bs}_ms" for kind in ("inference", "training") for bs in (1, 4, 16)} == set(fp32["samples"])
    for kind in ("inference", "training"):  # the knee is the smallest batch within 90 % of the best tokens/s
        knee, tps = m["knee"][kind], {pt["batch_size"]: pt[kind]["tokens_per_s"] for pt in m["points"]}
        assert knee["tokens_per_s"] >= 0.9 * max(tps.values()) and knee["peak_tokens_per_s"] == max(tps.values())
        assert all(tps[bs] < 0.9 * max(tps.values()) for bs in tps if bs < knee["batch_size"])
    assert "knee at bs" in fp32["message"] and "MFU n/a" in fp32["message"]
    f = m["flops"]  # the example has no config: analytic is 2N without attention; the counter sees attention too
    assert f["params_matmul"] > 0 and f["forward_per_token"] == 2 * f["params_matmul"]
    assert 0.9 < f["forward_per_token_counted"] / f["forward_per_token"] < 1.5
    assert 2.5 < f["train_per_token_counted"] / f["forward_per_token_counted"] < 3.5  # backward ~ 2x forward
    assert f["inference"]["mfu"] is None and "set peak_tflops" in f["peak_source"]
    assert bf16["status"] == "failed"
    assert (
        "inference throughput" in bf16["message"]
        and "tokens/s < 1e+12 tokens/s (batch 4, seq 16, bfloat16, eager)" in bf16["message"]
    )
    assert "batch 1," not in bf16["message"]  # the budget selects batch size 4 only


def test_parallel_inference_reports_aggregate_throughput_and_scaling_efficiency(run_llmcheck):
    result = run_llmcheck(
        CLEAN,
        *ONLY_THROUGHPUT,
        "--llmcheck-set",
        "throughput.parallel_workers=2",
        "--llmcheck-set",
        "throughput.parallel_time_s=0.3",
        "--llmcheck-set",
        "throughput.train=false",
        "--llmcheck-set",
        "throughput.batch_sizes=[1]",
        "--llmcheck-set",
        'throughput.precisions=["float32"]',
        "--llmcheck-set",
        "throughput.peak_tflops=1.0",
    )
    rec = _records(result)["tiny::throughput[float32-eager]"]
    assert rec["status"] == "passed", rec["message"]
    par = rec["metrics"]["parallel"]
    assert par["workers"] == 2 and len(par["per_worker"]) == 2 and par["devices"] == ["cpu", "cpu"]
    assert all(w["calls"] > 0 for w in par["per_worker"])
    assert par["aggregate_tokens_per_s"] == sum(w["tokens_per_s"] for w in par["per_worker"])
    assert par["scaling_efficiency"] == par["aggregate_tokens_per_s"] / (2 * par["solo_tokens_per_s"]) > 0
    assert "parallel: 2 processes x 1 threads" in rec["message"]
    assert rec["metrics"]["flops"]["inference"]["mfu"] > 0  # with peak_tflops set, MFU is computed on a CPU too
