"""The coldstart check through ``pytest --llmcheck``: a fresh process's time to the first output,
split into its parts, against a warm forward."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from model_sources import CLEAN

PARTS = {"interpreter", "import_torch", "import_model", "construct", "load", "first_forward"}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers inherit this: OpenMP's spinning threads slow a tiny model 50x on a busy 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_coldstart_reports_import_construct_load_and_first_forward_against_a_warm_forward(run_llmcheck):
    result = run_llmcheck(CLEAN, "-k", "coldstart")
    r = result.by_check["coldstart"]
    assert r["status"] == "passed", r["message"]
    parts = r["metrics"]["parts_s"]
    assert set(parts) == PARTS
    assert all(v > 0 for v in parts.values())
    assert r["metrics"]["first_output_s"] == pytest.approx(sum(parts.values()))
    assert r["metrics"]["warm_forward_s"] > 0 and r["metrics"]["weights_format"] == "safetensors"
    for label in (
        "interpreter start",
        "import torch",
        "import model file",
        "construct",
        "load checkpoint",
        "first forward",
        "warm forward",
        "slowest part: ",
    ):
        assert label in r["message"]
    assert set(r["samples"]) == {f"{name}_s" for name in PARTS | {"warm_forward"}}


def test_a_cold_start_over_max_first_output_s_fails_naming_its_slowest_part():
    from llmcheck.checks.coldstart import judge

    parts = {
        "interpreter": 0.05,
        "import_torch": 1.5,
        "import_model": 2.5,
        "construct": 0.2,
        "load": 0.01,
        "first_forward": 0.3,
    }
    metrics = {"parts_s": parts, "first_output_s": sum(parts.values()), "repeats": 1, "warm_forward_s": 0.01}
    verdict = judge(metrics, SimpleNamespace(max_first_output_s=2.0))
    assert verdict.status == "failed"
    assert verdict.message.startswith("cold start 4.56 s > max_first_output_s 2 s; first output 4.56 s")
    assert "first forward 300.00 ms (30x the warm forward); slowest part: import model file" in verdict.message


def test_a_factory_that_stalls_at_construction_fails_a_cold_start_budget_naming_construction(run_llmcheck):
    source = CLEAN.replace(
        "def tiny():\n    return TinyLM()", "def tiny():\n    import time\n    time.sleep(8)\n    return TinyLM()"
    )
    r = run_llmcheck(
        source,
        "-k",
        "coldstart",
        "--llmcheck-set",
        "coldstart.max_first_output_s=7",
        "--llmcheck-set",
        "coldstart.timeout=600",
    ).by_check["coldstart"]
    assert r["status"] == "failed", r["message"]
    assert "> max_first_output_s 7 s" in r["message"] and "slowest part: construct" in r["message"]
