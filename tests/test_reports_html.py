"""The HTML report: rendered from real runs, opened in headless Chromium, hostile strings stay text."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest
from chromium import needs_chromium, open_page
from model_sources import variant
from report_data import compression, document, gradient, latency, leak, record, showcase

from llmcheck.cli import main
from llmcheck.reports import charts, html, json_report, plots

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_MESSAGE = "weights mismatch </script><script>alert(2)</script>"
HOSTILE = (
    variant("@llmcheck.model(causal=True", f"@llmcheck.model(name={HOSTILE_NAME!r}, causal=True")
    + f"""

@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def broken():
    raise RuntimeError({HOSTILE_MESSAGE!r})
"""
)


def assert_inert(page) -> None:
    """No script element, no event-handler attribute, no console message (CSP violations log there)."""
    assert page.console == []
    assert [t for t, _ in page.tags if t == "script"] == []
    assert [(t, a) for t, attrs in page.tags for a in attrs if a.startswith("on")] == []


@needs_chromium
def test_a_real_run_renders_a_report_chromium_opens_with_no_console_errors(run_llmcheck, pytester, tmp_path):
    result = run_llmcheck(HOSTILE, "-k", "checkpoint and not checkpointing", "--llmcheck-html", "report.html")
    assert {r["model"]: r["status"] for r in result.report["results"]} == {HOSTILE_NAME: "passed", "broken": "error"}
    page = open_page(pytester.path / "report.html", tmp_path)
    assert_inert(page)
    assert HOSTILE_NAME in page.text and HOSTILE_MESSAGE in page.text  # shown, as text
    assert "Traceback" in page.text  # the error's trace is in the page
    assert page.screenshot.stat().st_size > 20_000  # a rendered page, not a blank one


@needs_chromium
def test_every_chart_kind_is_drawn_and_the_page_stays_inert(tmp_path):
    path = html.write(tmp_path / "showcase.html", showcase())
    page = open_page(path, tmp_path, height=6000)
    assert_inert(page)
    svgs = [a for t, a in page.tags if t == "svg" and a.get("class") == "pygal-chart"]
    assert len(svgs) >= 9
    for title in (
        "throughput (forward.tokens_per_s) vs batch_size, across items",
        "raw samples: distribution per series",
        "train_rss_bytes per iteration, with least-squares trend",
        "table: size_ratio vs top1",
        "grad_norms per parameter",
        "overfit_losses per iteration",
    ):
        assert title in page.text
    assert "outputs differ </script><script>alert(2)</script> at position 3" in page.text
    assert '"<img src=x onerror=alert(3)>"' in page.text and "</pre><b>bold?</b>" in page.text


@needs_chromium
def test_the_console_check_does_catch_a_csp_violation(tmp_path):
    # A positive control: the same policy with an inline style attribute must be reported.
    rendered = html.render(document([record("eval")]))
    path = tmp_path / "violating.html"
    path.write_text(rendered.replace("<footer>", '<footer style="color: red">'))
    page = open_page(path, tmp_path, height=600)
    assert any("Content Security Policy" in line for line in page.console)


def test_the_page_allows_only_its_own_stylesheet():
    page = html.render(showcase())
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page).group(1)
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["img-src"] == "data:"
    assert "unsafe" not in policy and "script-src" not in directives
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert directives["style-src"] == f"'sha256-{digest}'"
    assert " style=" not in page and "<script" not in page.replace("&lt;script", "")


def test_charts_are_chosen_from_the_data_present():
    titles = lambda rec: [c.title for c in charts.charts_for(rec)]  # noqa: E731
    assert titles(record("checkpoint")) == []
    assert titles(gradient()) == ["grad_norms per parameter", "overfit_losses per iteration"]
    assert titles(compression()) == ["table: size_ratio vs top1"]
    assert titles(leak(8192)) == [
        "train_rss_bytes per iteration, with least-squares trend",
        "train_live_tensors per iteration",
    ]
    assert titles(latency(1, 1.0)) == ["raw samples: distribution per series (box: quartiles; whiskers: 1.5 IQR)"]
    across = [c.title for c in charts.charts_across([latency(1, 1.0), latency(4, 2.0), latency(8, 3.0)])]
    assert [t.split(" (")[0] for t in across] == ["latency: throughput", "latency: latency", "latency: memory"]
    assert charts.charts_across([latency(1, 1.0)]) == []  # one configuration: nothing to draw against


def test_a_throughput_sweep_table_inside_one_record_is_drawn():
    rows = [
        {"batch_size": b, "precision": p, "tokens_per_s": 100.0 * b, "peak_memory_mb": 10.0 + b}
        for b in (1, 2, 4, 8)
        for p in ("float32", "bfloat16")
    ]
    drawn = charts.charts_for(record("throughput", metrics={"sweep": rows}))
    assert [c.title for c in drawn] == [
        "sweep: throughput (tokens_per_s) vs batch_size",
        "sweep: memory (peak_memory_mb) vs batch_size",
    ]
    assert "precision=bfloat16" in drawn[0].svg and "precision=float32" in drawn[0].svg


def test_nested_columns_of_a_table_are_drawn_as_one_line_each():
    rows = [
        {
            "batch_size": b,
            "inference": {"tokens_per_s": 100.0 * b, "note": "a long note that is not a label"},
            "training": {"tokens_per_s": 30.0 * b},
        }
        for b in (1, 4, 16)
    ]
    (chart,) = charts.charts_for(record("throughput", metrics={"points": rows}))
    assert chart.title == "points: throughput (inference.tokens_per_s, training.tokens_per_s) vs batch_size"
    assert "inference.tokens_per_s" in chart.svg and "training.tokens_per_s" in chart.svg
    assert "long note" not in chart.svg


def test_odd_or_hostile_data_does_not_break_the_page():
    odd = record(
        "weird",
        metrics={
            "grad_norms": {"a": "NaN", "b": 1.0},
            "curve": [1, 2, "Infinity", 4, 5],
            "table": [{"batch_size": 1}, {"batch_size": "<b>"}],
            "shape": [1, 2, 3, 4, 5, 6],
        },
        samples={"<svg onload=alert(4)>": [1.0, 2.0, 3.0], "empty": []},
    )
    page = html.render(document([odd]))
    assert "<svg onload" not in page and "&lt;svg onload=alert(4)&gt;" in page


def test_a_chart_that_fails_to_draw_costs_only_itself(monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("no good")

    monkeypatch.setattr(plots, "bars", boom)
    page = html.render(document([gradient()]))
    assert "chart not drawn: ValueError: no good" in page and "overfit_losses per iteration" in page


def test_llmcheck_report_rerenders_html_from_json(tmp_path, capsys):
    run = json_report.write(tmp_path / "run.json", showcase())
    assert main(["report", str(run), "--html", str(tmp_path / "out" / "page.html")]) == 0
    page = (tmp_path / "out" / "page.html").read_text()
    assert "<title>llmcheck report: 5 passed, 2 failed</title>" in page
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["page.html"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out" / "page.html").stat().st_mode & 0o777 == 0o666 & ~umask


def test_llmcheck_report_refuses_a_truncated_json(tmp_path, capsys):
    text = json.dumps(showcase())
    (tmp_path / "run.json").write_text(text[:-40])
    assert main(["report", str(tmp_path / "run.json"), "--html", str(tmp_path / "page.html")]) == 2
    assert "not valid JSON" in capsys.readouterr().err and not (tmp_path / "page.html").exists()


def test_the_template_and_stylesheet_are_package_data():
    templates = files("llmcheck.reports") / "templates"
    assert (templates / "report.html.j2").is_file() and (templates / "report.css").is_file()
    # and the wheel takes them: every file in templates/ matches a package-data glob in pyproject.toml
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "llmcheck.reports"
    ]
    shipped = {p for g in globs for p in (root / "llmcheck" / "reports").glob(g)}
    assert set((root / "llmcheck" / "reports" / "templates").iterdir()) <= shipped


@pytest.mark.parametrize("interrupted, banner", [(True, True), (False, False)])
def test_an_interrupted_run_says_so(interrupted, banner):
    page = html.render(document([record("eval")], interrupted=interrupted))
    assert ("This run did not finish" in page) is banner
