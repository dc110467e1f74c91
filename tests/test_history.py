"""``llmcheck history``: stored reports of main over commits, one chart per timed series, shifts flagged.

The page is opened in headless Chromium like the run report; the change-point rule is checked on
simulated series (flat with lognormal noise and disturbed runs, a step, a creep) where the truth is
known.
"""

from __future__ import annotations

import json
import math
import random

import pytest
from chromium import needs_chromium, open_page
from report_data import document, latency

from llmcheck import cli
from llmcheck.reports import history, json_report
from llmcheck.stats import change_points as cp

HOSTILE = "<script>alert(1)</script>"


def stored_run(i: int, rng: random.Random, step_at: int = 7, machine_step_at: int | None = None) -> dict:
    """Run ``i`` of main: batch 8 slows by 25 % from run ``step_at`` on (a code change), batch 1 stays
    flat with 4 % run-to-run scatter; the calibration moves only from ``machine_step_at``."""
    machine = 1.3 if machine_step_at is not None and i >= machine_step_at else 1.0
    stepped = latency(8, 2.0 * (1.25 if i >= step_at else 1.0) * math.exp(rng.gauss(0, 0.02)), seed=i)
    flat = latency(1, 1.0 * math.exp(rng.gauss(0, 0.04)), seed=100 + i)
    flat["model"] = HOSTILE
    flat["id"] = flat["id"].replace("::tiny::", f"::{HOSTILE}::")
    for r in (stepped, flat):
        r["metrics"]["calibration_ms"] = 0.5 * machine * math.exp(rng.gauss(0, 0.01))
    doc = document([stepped, flat], env={"git_commit": f"c{i:02d}" + "0" * 37})
    doc["started_at"] = 1_700_000_000 + 3600 * i
    doc["digest"] = json_report.content_digest(doc)  # as written by a run that started then
    return doc


@needs_chromium
def test_the_page_flags_a_planted_step_not_a_flat_noisy_series_and_opens_inert(tmp_path, capsys):
    runs = tmp_path / "main-reports"
    runs.mkdir()
    rng = random.Random(5)
    for i in range(12):  # names out of order: a folder's reports are ordered by their start time
        (runs / f"report-{11 - i:02d}.json").write_text(json.dumps(stored_run(i, rng)))
    (runs / "notes.json").write_text('{"not": "a report"}')  # skipped, not an error
    assert cli.main(["history", str(runs), "--html", str(tmp_path / "history.html")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("change point") == 1 and "change point at run 8 (c07000" in printed

    page = open_page(tmp_path / "history.html", tmp_path, height=1800)
    assert page.console == [] and [t for t, _ in page.tags if t == "script"] == []
    sections = {a["id"]: a["class"] for t, a in page.tags if t == "section" and "series" in a.get("class", "")}
    assert sorted(sections.values()) == ["series", "series flagged"]
    assert "latency[bs=8-sl=16-float32-eager] · forward_ms" in page.text
    assert f"{HOSTILE}::latency[bs=1" in page.text  # a hostile model name is shown as text
    assert "change point at run 8 (c070000000): +2" in page.text and "likely the machine" not in page.text
    assert len([t for t, _ in page.tags if t == "svg"]) == 2 and "machine calibration" in page.text
    assert page.screenshot.stat().st_size > 20_000


def test_a_step_the_calibration_shows_too_reads_as_the_machine(tmp_path):
    rng = random.Random(6)
    docs = [stored_run(i, rng, step_at=7, machine_step_at=7) for i in range(12)]
    page, flags = history.render([(f"r{i}.json", d) for i, d in enumerate(docs)])
    assert len(flags) == 1 and "the machine's calibration moved +3" in flags[0] and "likely the machine" in flags[0]
    assert "likely the machine" in page


def test_each_run_is_a_median_with_the_range_of_its_process_medians_when_it_has_them():
    record = latency(8, 2.0)
    record["metrics"]["processes"] = {"series": {"forward_ms": {"medians": [1.9, 2.2, 2.0]}}}
    p = history.point(record, "forward_ms", 3)
    assert (p.run, p.median, p.low, p.high, p.calibration) == (3, 2.0, 1.9, 2.2, None)
    alone = history.point(latency(8, 2.0), "forward_ms", 0)
    assert alone.low <= alone.median <= alone.high  # the 95 % CI of the median of its samples


def flat(rng: random.Random, n: int, scatter: float, disturbed: float = 0.0) -> list[float]:
    return [2.0 * math.exp(rng.gauss(0, scatter)) * (1.3 if rng.random() < disturbed else 1.0) for _ in range(n)]


def test_flat_noisy_series_rarely_get_a_change_point_and_a_step_is_found_where_it_is():
    rng = random.Random(0)
    noisy = [flat(rng, 20, 0.05, disturbed=0.05) for _ in range(400)]
    false = sum(bool(cp.change_points(v)) for v in noisy) / len(noisy)
    steps = [v[:6] + [x * 1.2 for x in v[6:]] for v in (flat(rng, 12, 0.03) for _ in range(300))]
    found = [cp.change_points(v) for v in steps]
    near = sum(any(s.kind == "step" and abs(s.index - 6) <= 1 for s in f) for f in found) / len(found)
    print(f"flat 20 runs, 5% scatter, 5% disturbed: {false:.1%} false; 20% step at 3% scatter: {near:.1%} found")
    assert false <= 0.03  # simulated at 0.6 % over 2000 series (llmcheck.stats.change_points)
    assert near >= 0.85  # simulated at 94 %


def test_a_slow_creep_that_no_single_run_shows_is_flagged_as_creep():
    rng = random.Random(1)
    series = [x * 1.015**i for i, x in enumerate(flat(rng, 24, 0.02))]  # +1.5 % per commit, +41 % in all
    shifts = cp.change_points(series)
    assert [s.kind for s in shifts] == ["creep"] and shifts[0].change > 0.2
    assert max(abs(b / a - 1) for a, b in zip(series, series[1:])) < 0.1  # no pull request saw 10 %


def test_a_folder_without_reports_is_refused(tmp_path, capsys):
    assert cli.main(["history", str(tmp_path), "--html", str(tmp_path / "h.html")]) == 2
    assert "no llmcheck reports in" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    assert cli.main(["history", str(tmp_path), "--html", str(tmp_path / "h.html")]) == 2
    assert "(skipped x.json: " in capsys.readouterr().err
    with pytest.raises(ValueError):
        cp.change_points([1.0, 0.0, 1.0])
