"""The compression check's judgement: pure functions over a metrics table (no torch, no worker)."""

import pytest

from llmcheck.checks.compression.check import CHECK, VARIANTS, thresholds
from llmcheck.settings import Params, SettingsError


def params(**changes) -> Params:
    return Params({**{k: p.default for k, p in CHECK.params.items()}, **changes})


def row(variant="int8_dynamic", **metrics) -> dict:
    base = {
        "variant": variant,
        "kind": variant.split("@")[0],
        "sparsity": None,
        "coverage": 1.0,
        "unchanged": [],
        "changed": {},
        "positions": 256,
        "nonfinite": 0,
        "kl": 1e-4,
        "kl_max": 1e-3,
        "top1": 0.99,
        "rel_error": 0.02,
        "worst_modules": [],
        "size_ratio": 0.3,
        "speed_ratio": 1.4,
        "timing_invalid": [],
    }
    return {**base, **metrics}


def judge(*rows, **changes):
    # Every variant gated, as if the model shipped it: these tests are about the thresholds. Without
    # a gate the same findings are advisory (tests/test_advisory.py).
    changes.setdefault("gate", list(VARIANTS))
    return CHECK.judge({"table": list(rows), "positions": 256, "inputs": "generated"}, params(**changes))


def test_overrides_apply_per_variant_then_per_sparsity_over_the_defaults():
    p = params(
        overrides={"prune_unstructured": {"max_rel_error": 0.3}, "prune_unstructured@0.9": {"max_rel_error": 0.8}}
    )
    assert thresholds(p, "prune_unstructured@0.5", "prune_unstructured")["max_rel_error"] == 0.3
    assert thresholds(p, "prune_unstructured@0.9", "prune_unstructured")["max_rel_error"] == 0.8
    assert thresholds(p, "int8_dynamic", "int8_dynamic")["max_rel_error"] == 0.1
    assert thresholds(p, "torchao_int4", "torchao_int4")["max_kl"] == 0.14  # int4's built-in looser default


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"int8_dynamic": {"max_kll": 0.1}}, "unknown threshold 'max_kll'; valid: min_coverage, max_kl, min_top1"),
        ({"int8": {"max_kl": 0.1}}, "unknown variant 'int8'; valid: int8_dynamic, torchao_int8"),
        ({"fp16": {"max_kl": "high"}}, "compression.overrides.fp16.max_kl = 'high' (str)"),
        ({"fp16": {"min_top1": 2}}, "expected a value <= 1"),
        ("int8_dynamic", "expected a table of variant -> {threshold: value}"),
    ],
)
def test_a_bad_override_is_a_settings_error_that_names_the_valid_choices(overrides, expected):
    with pytest.raises(SettingsError) as info:
        thresholds(params(overrides=overrides), "fp16", "fp16")
    assert expected in str(info.value)


def test_a_row_within_every_threshold_passes_with_its_numbers():
    verdict = judge(row(), row("fp16", size_ratio=0.5, speed_ratio=0.7))
    assert verdict.status == "passed"
    assert (
        "int8_dynamic (coverage 100%, KL 0.0001, top-1 99.0%, rel err 0.02, size 0.30x, 1.40x speed)" in verdict.message
    )
    assert "fp16 (" in verdict.message and "0.70x speed (slower)" in verdict.message


def test_non_finite_metrics_never_pass():
    # Strict JSON turns NaN into the string "NaN"; a report read back must judge the same way.
    for bad in (float("nan"), "NaN", float("inf"), "Infinity"):
        verdict = judge(row(rel_error=bad))
        assert verdict.status == "failed", bad
        assert "relative logit error" in verdict.message
    assert "3 non-finite output values" in judge(row(nonfinite=3)).message


def test_low_coverage_names_the_weights_left_alone():
    left = [f"h.{i}.attn.c_attn.weight (Conv1D)" for i in range(6)]
    verdict = judge(row(coverage=0.08, unchanged=left))
    assert verdict.status == "failed"
    assert (
        "int8_dynamic: coverage 8% of eligible weight bytes < min_coverage 95%; left as they were: "
        "h.0.attn.c_attn.weight (Conv1D), h.1.attn.c_attn.weight (Conv1D)"
    ) in verdict.message
    assert "(+2 more)" in verdict.message


def test_an_accuracy_failure_names_the_module_that_adds_the_error():
    worst = [{"module": "blocks.0.fc2", "type": "Linear -> quantized.dynamic.Linear", "rel_error": 0.55}]
    verdict = judge(row(top1=0.8, worst_modules=worst))
    assert verdict.message == (
        "int8_dynamic: top-1 agreement 80.0% < min_top1 90.0%; largest local error: blocks.0.fc2 "
        "(Linear -> quantized.dynamic.Linear) alone adds 0.55 relative error"
    )


def test_a_variant_bigger_on_disk_than_the_baseline_fails():
    verdict = judge(row("compressed", size_ratio=1.3))
    assert verdict.status == "failed" and "size on disk 1.30x the baseline > max_size_ratio 1.05" in verdict.message


def test_speed_is_judged_only_when_asked_and_never_from_a_noisy_measurement():
    assert judge(row(speed_ratio=0.5)).status == "passed"  # min_speedup 0: reported, not judged
    assert "speed-up 0.50x < min_speedup 1.2" in judge(row(speed_ratio=0.5), min_speedup=1.2).message
    noisy = judge(row(speed_ratio=3.0, timing_invalid=["too noisy: IQR/median = 40% > 25%"]), min_speedup=1.2)
    assert noisy.status == "failed" and "speed-up not judged reliably: too noisy" in noisy.message
    assert judge(row(speed_ratio=1.5), min_speedup=1.2).status == "passed"


def test_a_variant_that_could_not_run_fails_and_skipped_variants_are_listed():
    verdict = judge(
        row("fp16", error="RuntimeError: no half kernel"),
        {"variant": "torchao_int8", "kind": "torchao_int8", "skipped": "pip install llmcheck[torchao]"},
    )
    assert verdict.status == "failed"
    assert verdict.message == (
        "fp16: could not run: RuntimeError: no half kernel [torchao_int8 skipped: pip install llmcheck[torchao]]"
    )
