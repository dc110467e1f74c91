"""Markdown for pull-request comments: the verdict first, user strings kept as text in table cells."""

from __future__ import annotations

from report_data import document, latency, record

from llmcheck.reports import compare, markdown


def test_a_cell_keeps_pipes_tags_and_markdown_as_text():
    assert (
        markdown.cell("a|b <script>alert(1)</script> *x* `y` [z](u)\nnext")
        == r"a\|b &lt;script&gt;alert(1)&lt;/script&gt; \*x\* \`y\` \[z\](u) next"
    )
    assert markdown.cell(None) == "" and markdown.cell(0.123456) == "0.1235"


def test_a_comparison_leads_with_the_verdict_and_lists_regressions_first():
    base = document([record("checkpoint"), record("eval", "failed"), record("resume")])
    head = document(
        [record("checkpoint", "failed", model="tiny", message="max |Δ| = 0.5 <b>"), record("eval"), record("fuzz")]
    )
    text = markdown.comparison(compare.compare(base, head))
    lines = text.splitlines()
    assert lines[0] == "❌ **llmcheck compare: 2 regressions**"
    assert lines[2].startswith("BASE `0123456789ab` (3 checks) → HEAD `0123456789ab` (3 checks); 2 paired.")
    table = [line for line in lines if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in table] == [
        "| ❌ regression",
        "| ❌ regression",
        "| ✅ improvement",
        "| 🆕 new",
    ]
    assert r"passed -&gt; failed: max \|Δ\| = 0.5 &lt;b&gt;" in text


def test_metric_changes_that_are_not_gated_are_folded_away():
    base = document([record("gradient", metrics={"loss": 4.0})])
    head = document([record("gradient", metrics={"loss": 3.0})])
    text = markdown.comparison(compare.compare(base, head))
    assert text.startswith("✅ **llmcheck compare: no regressions**")
    assert "<details><summary>1 other metric change (not gated" in text
    assert "-25.0% (better; lower is better)" in text


def test_warnings_are_quoted_above_the_table():
    base = document([latency(1, 1.0)])
    head = document([latency(1, 1.0)], interrupted=True)
    text = markdown.comparison(compare.compare(base, head))
    assert "> ⚠️ the HEAD run was interrupted: it holds only the checks that finished" in text
