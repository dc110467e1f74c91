"""Settings: pyproject, ini, per-model and command-line layers; bad values fail their own items."""

import pytest
from model_sources import CLEAN

from llmcheck.registry import Check, Param
from llmcheck.results import Verdict
from llmcheck.settings import GLOBAL_PARAMS, Layer, SettingsError, assignments, coerce, resolve


def _check(**params) -> Check:
    return Check(
        "demo", "demo", "a demo", measure=lambda c, p: {}, judge=lambda m, p: Verdict("passed", ""), params=params
    )


DEMO = _check(
    steps=Param(int, 3, "steps", minimum=1), names=Param(list, ["a"], "names", item_type=str, choices=("a", "b"))
)


def test_later_layers_win_and_every_check_accepts_a_timeout():
    layers = [
        Layer("pyproject", {"timeout": 60, "demo": {"steps": 5}}),
        Layer("cli", {"demo": {"steps": 7, "timeout": 9}}),
    ]
    glob, params, enabled = resolve(layers, {"demo": DEMO}, DEMO)
    assert (glob["timeout"], params.steps, params.timeout, enabled) == (60, 7, 9, True)


def test_a_global_timeout_applies_to_checks_without_their_own():
    glob, params, _ = resolve([Layer("cli", {"timeout": 12})], {"demo": DEMO}, DEMO)
    assert params.timeout == 12.0


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"demo": {"stpes": 1}},
            "unknown parameter demo.stpes from here; valid parameters of demo: names, steps, timeout",
        ),
        (
            {"nosuch": {}},
            f"unknown setting 'nosuch' from here; valid global settings: {', '.join(sorted(GLOBAL_PARAMS))}; "
            "valid checks: demo",
        ),
        ({"demo": {"steps": "ten"}}, "demo.steps = 'ten' (str) from here: expected an integer"),
        ({"demo": {"steps": 0}}, "demo.steps = 0 (int) from here: expected a value >= 1"),
        ({"demo": {"steps": True}}, "demo.steps = True (bool) from here: expected an integer"),
        ({"demo": {"names": ["c"]}}, "demo.names[0] = 'c' (str) from here: expected one of 'a', 'b'"),
        ({"timeout": -1}, "timeout = -1 (int) from here: expected a value >= 0.1"),
    ],
)
def test_bad_settings_echo_name_value_type_source_and_the_valid_choices(values, message):
    with pytest.raises(SettingsError) as err:
        resolve([Layer("here", values)], {"demo": DEMO}, DEMO)
    assert str(err.value) == message


def test_command_line_assignments_parse_json_values_and_dotted_names():
    layer = assignments(["timeout=60", "demo.steps=5", 'demo.names=["a", "b"]', "device=cuda:1"], "cli")
    assert layer.values == {"timeout": 60, "demo": {"steps": 5, "names": ["a", "b"]}, "device": "cuda:1"}
    with pytest.raises(SettingsError, match="expected KEY=VALUE"):
        assignments(["timeout"], "cli")


def test_a_float_parameter_accepts_an_int_but_an_int_refuses_a_fraction():
    assert coerce("x", 1, Param(float, 0.0, ""), "s") == 1.0
    with pytest.raises(SettingsError, match="expected an integer"):
        coerce("x", 1.5, Param(int, 0, ""), "s")


def test_an_unknown_check_on_the_command_line_fails_the_items_listing_valid_checks(run_llmcheck):
    result = run_llmcheck(CLEAN, "-k", "eval", "--llmcheck-set", "gradinet.overfit_steps=3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*unknown setting 'gradinet' from the command line; valid global settings:*valid checks:*gradient*"]
    )
    assert result.by_check["eval"]["status"] == "error"


def test_a_bad_value_in_pyproject_names_the_file_and_fails_only_that_checks_items(run_llmcheck, pytester):
    pytester.makepyprojecttoml('[tool.llmcheck.checks.gradient]\noverfit_steps = "many"\n')
    result = run_llmcheck(CLEAN, "-k", "eval or gradient")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*gradient.overfit_steps = 'many' (str) from ?tool.llmcheck? in */pyproject.toml: expected an integer*"]
    )


def test_per_model_settings_apply_and_the_command_line_overrides_them(run_llmcheck):
    source = CLEAN.replace(
        "@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)",
        "@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, "
        'checks={"gradient": {"overfit_steps": 2, "min_loss_drop": 0.99}, "resume": False})',
    )
    result = run_llmcheck(source, "-k", "gradient or resume", "-rs")
    assert result.by_check["gradient"]["status"] == "failed"
    assert (
        "in 2 steps" in result.by_check["gradient"]["message"]
        and "need >= 99%" in result.by_check["gradient"]["message"]
    )
    assert result.by_check["resume"]["status"] == "skipped"
    assert "resume is turned off" in result.by_check["resume"]["message"]
    result = run_llmcheck(source, "-k", "gradient", "--llmcheck-set", "gradient.min_loss_drop=0.01")
    assert result.by_check["gradient"]["status"] == "passed"
    assert result.by_check["gradient"]["params"]["min_loss_drop"] == 0.01


def test_ini_file_settings_are_read(run_llmcheck, pytester):
    pytester.makeini("[pytest]\nllmcheck_settings =\n    gradient.overfit_steps = 3\n")
    result = run_llmcheck(CLEAN, "-k", "gradient")
    assert result.by_check["gradient"]["params"]["overfit_steps"] == 3
