"""`llmcheck compare`: status changes, missing and new items, thresholds, environments, broken baselines."""

from __future__ import annotations

import json

import pytest
from report_data import ENV, compression, document, latency, leak, record

from llmcheck.cli import main
from llmcheck.reports import compare, json_report
from llmcheck.reports.compare import CompareError, Rules, Threshold
from llmcheck.reports.json_report import ReportError


def verdicts(result: dict, kind: str | None = None) -> list[tuple[str, str, str]]:
    return [(r["id"].rsplit("::", 1)[-1], r["kind"], r["verdict"]) for r in result["rows"] if kind in (None, r["kind"])]


def write(tmp_path, name: str, doc: dict) -> str:
    return str(json_report.write(tmp_path / name, doc))


def test_two_identical_runs_are_not_a_regression():
    doc = document([record("checkpoint"), latency(1, 1.0)])
    result = compare.compare(doc, doc)
    assert result["regressions"] == 0
    assert verdicts(result) == [("latency[bs=1-sl=16-float32-eager]", "samples", "unchanged")]


def test_pass_to_fail_is_a_regression_and_fail_to_pass_an_improvement():
    base = document([record("checkpoint"), record("eval", "failed")])
    head = document([record("checkpoint", "failed", message="outputs differ at position 3"), record("eval")])
    result = compare.compare(base, head)
    assert verdicts(result) == [("checkpoint", "status", "regression"), ("eval", "status", "improvement")]
    assert "passed -> failed: outputs differ at position 3" in result["rows"][0]["note"]
    assert result["regressions"] == 1


@pytest.mark.parametrize("now", ["error", "timeout", "crashed"])
def test_a_pass_that_now_errors_times_out_or_crashes_is_a_regression(now):
    result = compare.compare(document([record("hang")]), document([record("hang", now)]))
    assert verdicts(result) == [("hang", "status", "regression")]


def test_a_passing_check_that_is_now_skipped_is_a_regression():
    result = compare.compare(
        document([record("causal")]), document([record("causal", "skipped", message="not causal")])
    )
    assert result["rows"][0]["verdict"] == "regression"
    assert "no longer proves anything" in result["rows"][0]["note"]


def test_a_check_missing_from_head_is_a_regression_and_a_new_one_is_listed():
    base = document([record("checkpoint"), record("resume")])
    head = document([record("checkpoint"), record("fuzz", "failed")])
    result = compare.compare(base, head)
    assert verdicts(result) == [("resume", "missing", "regression"), ("fuzz", "new", "new")]
    assert result["rows"][1]["note"] == "new check (failed)"


def test_different_torch_or_device_is_refused_naming_the_fields():
    other = {**ENV, "torch": "2.12.0+cpu", "device": "NVIDIA H100"}
    with pytest.raises(CompareError) as excinfo:
        compare.compare(document([record("checkpoint")]), document([record("checkpoint")], env=other))
    message = str(excinfo.value)
    assert "torch: BASE '2.13.0+cpu', HEAD '2.12.0+cpu'" in message
    assert "device: BASE 'cpu', HEAD 'NVIDIA H100'" in message
    assert "--allow-env-mismatch" in message and "python" not in message


def test_allow_env_mismatch_compares_and_keeps_the_difference_as_a_warning():
    other = {**ENV, "torch": "2.12.0+cpu", "cpu_count": 64}
    result = compare.compare(
        document([record("checkpoint")]), document([record("checkpoint")], env=other), Rules(allow_env_mismatch=True)
    )
    assert result["regressions"] == 0
    assert any("torch: BASE '2.13.0+cpu', HEAD '2.12.0+cpu'" in w for w in result["warnings"])
    assert any("cpu_count: BASE 2, HEAD 64" in w for w in result["warnings"])


def test_a_different_schema_major_is_refused(tmp_path):
    doc = document([record("checkpoint")])
    doc["schema_version"] = "2.0"
    doc["digest"] = json_report.content_digest(doc)
    path = tmp_path / "future.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match="schema version 2.0; this llmcheck reads 1.x"):
        json_report.read(path)
    with pytest.raises(CompareError, match=f"schema versions differ: BASE {json_report.SCHEMA_VERSION}, HEAD 2.0"):
        compare.compare(document([record("checkpoint")]), doc)


def test_a_truncated_baseline_is_a_hard_error(tmp_path, capsys):
    base = tmp_path / "base.json"
    text = json.dumps(document([record("checkpoint"), record("eval")]))
    base.write_text(text[: len(text) // 2])
    head = write(tmp_path, "head.json", document([record("checkpoint"), record("eval")]))
    assert main(["compare", str(base), head]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_a_hand_edited_baseline_is_a_hard_error(tmp_path, capsys):
    base = write(tmp_path, "base.json", document([record("checkpoint", "failed")]))
    doc = json.loads(open(base).read())
    doc["results"][0]["status"] = "passed"  # still valid JSON, still a known status
    open(base, "w").write(json.dumps(doc))
    head = write(tmp_path, "head.json", document([record("checkpoint", "failed")]))
    assert main(["compare", base, head]) == 2
    assert "content digest does not match" in capsys.readouterr().err


def test_a_report_without_results_is_not_mistaken_for_an_empty_run(tmp_path, capsys):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"schema_version": "1.0"}))
    head = write(tmp_path, "head.json", document([]))
    assert main(["compare", str(base), head]) == 2
    assert "not an llmcheck report" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec, worse, amount, relative",
    [
        ("latency.p50:+5%", 1, 0.05, True),
        ("throughput.tokens_per_s:-3%", -1, 0.03, True),
        ("gradient.loss:+0.1", 1, 0.1, False),
        ("*.peak_memory_mb:+.5%", 1, 0.005, True),
    ],
)
def test_thresholds_parse_with_direction_and_unit(spec, worse, amount, relative):
    t = Threshold.parse(spec)
    assert (t.worse, t.relative) == (worse, relative) and t.amount == pytest.approx(amount)


@pytest.mark.parametrize("spec", ["latency.p50", "latency.p50:5%", "latency.p50:+x%", ":+5%"])
def test_a_malformed_threshold_says_what_is_expected(spec):
    with pytest.raises(CompareError, match=r"expected CHECK\.METRIC:\+N% or CHECK\.METRIC:-N"):
        Threshold.parse(spec)


def test_a_threshold_on_a_deterministic_metric_gates_it():
    base = document([record("gradient", metrics={"loss": 4.00, "trainable": 28})])
    head = document([record("gradient", metrics={"loss": 4.50, "trainable": 28})])
    assert compare.compare(base, head)["regressions"] == 0  # without a threshold a metric change is listed only
    assert verdicts(compare.compare(base, head)) == [("gradient", "metric", "changed")]
    result = compare.compare(base, head, Rules(thresholds=[Threshold.parse("gradient.loss:+10%")]))
    assert verdicts(result) == [("gradient", "metric", "regression")]
    assert "4 -> 4.5: beyond +10%" in result["rows"][0]["note"]
    result = compare.compare(base, head, Rules(thresholds=[Threshold.parse("gradient.loss:+20%")]))
    assert result["regressions"] == 0 and result["rows"][0]["verdict"] == "unchanged"


def test_a_metric_threshold_on_a_measured_check_needs_its_samples_to_agree():
    base = latency(1, 1.00, seed=1)
    noisy = latency(1, 1.00, seed=2)
    noisy["metrics"]["forward"]["median_ms"] = 1.08  # the summary moved, the samples did not
    rules = Rules(thresholds=[Threshold.parse("latency.median_ms:+5%")])
    result = compare.compare(document([base]), document([noisy]), rules)
    row = next(r for r in result["rows"] if r["name"] == "forward.median_ms")
    assert row["verdict"] == "within noise" and result["regressions"] == 0
    slower = latency(1, 1.10, seed=2)
    result = compare.compare(document([base]), document([slower]), rules)
    row = next(r for r in result["rows"] if r["name"] == "forward.median_ms")
    assert row["verdict"] == "regression" and "confirmed by samples forward_ms" in row["note"]


def test_higher_is_better_metrics_regress_when_they_fall():
    base, head = latency(1, 1.0), latency(1, 1.25)  # 25% slower: tokens/s falls
    rules = Rules(thresholds=[Threshold.parse("latency.tokens_per_s:-10%")])
    result = compare.compare(document([base]), document([head]), rules)
    row = next(r for r in result["rows"] if r["name"] == "forward.tokens_per_s")
    assert (row["verdict"], row["better"]) == ("regression", "higher")


def test_metric_direction_comes_from_the_name():
    assert [
        compare.better(n)
        for n in ("forward.median_ms", "tokens_per_s", "peak_memory_mb", "top1", "loss", "size_ratio", "trainable")
    ] == ["lower", "higher", "lower", "higher", "lower", "lower", None]


def test_a_threshold_that_matches_nothing_is_reported():
    doc = document([record("checkpoint")])
    result = compare.compare(doc, doc, Rules(thresholds=[Threshold.parse("latncy.p50:+5%")]))
    assert result["warnings"] == ["threshold latncy.p50:+5% from the command line matched no metric or sample series"]


def test_thresholds_come_from_pyproject_and_the_command_line_wins(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.llmcheck.compare]\nfail_on = ["gradient.loss:+50%"]\nalpha = 0.001\nmin_effect = "10%"\n'
    )
    base = write(tmp_path, "base.json", document([record("gradient", metrics={"loss": 4.0})]))
    head = write(tmp_path, "head.json", document([record("gradient", metrics={"loss": 4.5})]))
    config = ["--config", str(tmp_path / "pyproject.toml")]
    assert main(["compare", base, head, *config, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rules"] == {"alpha": 0.001, "min_effect": 0.1, "thresholds": ["gradient.loss:+50%"]}
    assert main(["compare", base, head, *config, "--fail-on", "gradient.loss:+5%"]) == 1
    assert "REGRESSION" in capsys.readouterr().out


def test_an_unknown_compare_setting_lists_the_valid_ones(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text("[tool.llmcheck.compare]\nfail-on = []\n")
    doc = write(tmp_path, "run.json", document([]))
    assert main(["compare", doc, doc, "--config", str(tmp_path / "pyproject.toml")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['fail-on']" in err and "fail_on (thresholds" in err


def test_curves_in_samples_are_listed_but_gated_only_when_a_threshold_names_them():
    higher = leak(1000)  # memory level 20% higher: another process's baseline, not a leak
    higher["samples"]["train_rss_bytes"] = [v * 1.2 for v in higher["samples"]["train_rss_bytes"]]
    base, head = document([leak(1000)]), document([higher])
    result = compare.compare(base, head)
    row = next(r for r in result["rows"] if r["name"] == "train_rss_bytes")
    assert (row["verdict"], result["regressions"]) == ("changed", 0)
    assert "a curve, not repeated measurements: not gated" in row["note"]
    result = compare.compare(base, head, Rules(thresholds=[Threshold.parse("leak.samples.train_rss_bytes:+10%")]))
    row = next(r for r in result["rows"] if r["name"] == "train_rss_bytes")
    assert row["verdict"] == "regression"


def test_the_issue_s_example_threshold_names_the_median_as_p50():
    assert {"forward.median_ms", "median_ms", "median", "p50", "forward.p50"} <= compare.metric_names(
        "forward.median_ms"
    )
    base, head = latency(1, 1.00, seed=1), latency(1, 1.10, seed=2)
    result = compare.compare(document([base]), document([head]), Rules(thresholds=[Threshold.parse("latency.p50:+5%")]))
    row = next(r for r in result["rows"] if r["kind"] == "metric" and r["name"] == "forward.median_ms")
    assert row["verdict"] == "regression" and row["threshold"] == "+5%"
    assert result["warnings"] == []


def test_table_rows_compare_by_their_label():
    base = document([compression()])
    worse = compression()
    worse["metrics"]["table"][0]["top1"] = 0.90  # int8_dynamic lost agreement
    result = compare.compare(base, document([worse]), Rules(thresholds=[Threshold.parse("compression.top1:-1%")]))
    assert [(r["name"], r["verdict"]) for r in result["rows"]] == [("table.int8_dynamic.top1", "regression")]
