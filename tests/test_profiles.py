"""Profiles: ``quick`` for pull requests, ``full`` for nightly runs, a settings layer between the
defaults and pyproject, so every file, model and command-line setting still overrides them."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_sources import CLEAN

from llmcheck.registry import load_checks
from llmcheck.settings import Layer, SettingsError, resolve, turned_off_by

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"
QUICK = {"attention", "batch", "causal", "checkpoint", "checkpointing", "data", "eval", "frozen", "fuzz"}
QUICK |= {"generation", "gradient", "hang", "kv-cache", "leak", "padding", "resume", "static-cache"}
OFF_IN_QUICK = {"amp", "coldstart", "compile", "compression", "distributed", "export", "input-pipeline"}
OFF_IN_QUICK |= {"latency", "memory", "throughput", "training"}


def settle(layers: list[Layer], name: str):
    checks = load_checks()
    return resolve(layers, checks, checks[name])


def items(layers: list[Layer]) -> dict[str, int]:
    """Check name -> the items that run (a check's variants, one for the others; none when off)."""
    out = {}
    for name, check in load_checks().items():
        _, params, enabled = settle(layers, name)
        if enabled:
            out[name] = len(check.variants(params)) if check.variants else 1
    return out


def test_quick_runs_the_correctness_and_cheap_fault_checks_only():
    quick = [Layer("the command line", {"profile": "quick"})]
    ran = set(items(quick))
    assert ran == QUICK & set(load_checks())
    assert not ran & OFF_IN_QUICK
    assert settle(quick, "leak")[1].iterations == 30 and settle(quick, "fuzz")[1].examples == 20


def test_quick_runs_fewer_items_and_less_work_than_the_default():
    default, quick = items([]), items([Layer("the command line", {"profile": "quick"})])
    assert sum(quick.values()) < sum(default.values()) - 8  # latency and throughput variants, amp, memory, ...
    quick_layer = [Layer("the command line", {"profile": "quick"})]
    for name, work in (("leak", "iterations"), ("fuzz", "examples"), ("leak", "budget_s"), ("gradient", "budget_s")):
        assert settle(quick_layer, name)[1][work] < settle([], name)[1][work]


def test_full_asks_for_more_work_and_larger_budgets_than_the_default():
    full = [Layer("[tool.llmcheck] in pyproject.toml", {"profile": "full"})]
    assert set(items(full)) == set(items([]))
    for name, work in (("leak", "iterations"), ("fuzz", "examples"), ("training", "steps"), ("memory", "budget_s")):
        assert settle(full, name)[1][work] > settle([], name)[1][work]


def test_pyproject_model_and_command_line_settings_override_the_profile():
    layers = [
        Layer("[tool.llmcheck] in pyproject.toml", {"profile": "quick", "leak": {"iterations": 12}, "latency": True}),
    ]
    assert settle(layers, "leak")[1].iterations == 12
    assert settle(layers, "latency")[2] is True
    assert settle(layers, "leak")[1].budget_s == 15.0  # what pyproject leaves alone, the profile sets
    # the last layer that names a profile chooses it: the command line's over pyproject's
    layers.append(Layer("the command line", {"profile": "default"}))
    assert settle(layers, "leak")[1].budget_s == 60.0 and settle(layers, "leak")[1].iterations == 12


def test_a_check_off_in_the_profile_says_so_and_how_to_turn_it_on():
    checks = load_checks()
    quick = [Layer("the command line", {"profile": "quick"})]
    assert turned_off_by(quick, checks, "latency") == "the quick profile"
    assert turned_off_by([*quick, Layer("model", {"latency": True})], checks, "latency") == ""


def test_every_setting_of_a_profile_is_a_parameter_of_its_check():
    from llmcheck.settings import FULL, QUICK, check_params

    checks = load_checks()
    for table in (QUICK, FULL):
        for name, values in table.items():
            assert set(values) <= set(check_params(checks[name])), (name, values)


def test_an_unknown_profile_names_the_choices():
    with pytest.raises(SettingsError, match="profile = 'fast' .* expected one of 'default', 'quick', 'full'"):
        settle([Layer("the command line", {"profile": "fast"})], "leak")


def test_the_quick_option_runs_fewer_items_and_pyproject_still_overrides_it(run_llmcheck, pytester):
    pytester.makepyprojecttoml("[tool.llmcheck.checks.leak]\niterations = 12\n")
    result = run_llmcheck(CLEAN, "-k", "latency or leak", "--llmcheck-profile", "quick")
    result.stdout.fnmatch_lines(["llmcheck: * checks (*; the quick profile"])
    records = result.report["results"]
    latency = [r for r in records if r["check"] == "latency"]
    assert len(latency) == 1 and latency[0]["status"] == "skipped"  # one item, not one per configuration
    assert latency[0]["message"] == (
        "latency is turned off by the quick profile; --llmcheck-set latency=true turns it on"
    )
    leak = result.by_check["leak"]
    assert leak["status"] == "passed", leak["message"]
    assert leak["metrics"]["iterations"] == 12 and leak["params"]["budget_s"] == 15.0
