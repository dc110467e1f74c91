"""``llmcheck ab`` end to end: real worker processes, tiny models whose speed differs structurally.

Each run is kept short: an interval is taken over worker-process pairs and needs at least 3 of
them, so a run costs about three process-pair start-ups (torch imports) plus a few rounds of ~1 s,
and these tests ask for no more than that (`--min-pairs 3`, 2 rounds per pair, 2 turns per round);
verdicts, never timings, are asserted. The false-alarm rate itself is shown on simulated data in
test_ab_statistics.py, and measured on this machine by benchmarks/ab_sensitivity.py.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from ab_model_sources import write

from llmcheck import cli
from llmcheck.ab import engine as ab
from llmcheck.ab import sources as ab_sources
from llmcheck.reports import ab_report

FAST = ["--set", 'latency.precisions=["float32"]', "--set", "latency.seq_lens=[16]", "-q"]
# The changes below are two blocks on a stack of two (2 -> 4 blocks, a 2x step: measured 1.97-2.07,
# 4 -> 2 0.485-0.490), so a loose precision decides them: stop once 3 process pairs (the fewest an
# interval takes) give ±20 %. A stopped run's interval is ratio / 1.2 .. ratio * 1.2, so even with the
# step halved by load (under CI's `-n 2`, 6 vs 5 blocks measured +10.6 % for +20 %) a regression
# stops with ci_low >= 1.5 / 1.2 = 1.25 and an improvement with ci_high <= 0.67 * 1.2 = 0.8. Each pair
# serves 2 rounds (--ab-recycle 2, so these runs also cover rounds grouped into process pairs) of 2
# turns per side (--ab-repeats 2, still the A B B A order): within a pair the round ratios agree to a
# few %, it is the pairs that differ. A quiet machine stops after ~15 s (3 pairs); a busy one keeps
# adding pairs until the budget, so a disturbed pair is outvoted: under `-n 2`, 60 s once gave 7 pairs
# and a -22 % change with CI 0.63-0.97, so the budget stays 90 s, which only a loaded machine uses.
# Sensitivity to 10-25 % steps is measured by benchmarks/ab_sensitivity.py, not here.
ADAPTIVE = [
    "--ab-budget",
    "90s",
    "--ab-precision",
    "20%",
    "--min-pairs",
    "3",
    "--ab-recycle",
    "2",
    "--ab-repeats",
    "2",
]


def llmcheck_ab(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["ab", *args])
    return code, capsys.readouterr().out


def test_two_identical_model_files_show_no_significant_change_in_repeated_runs(tmp_path, monkeypatch, capsys):
    base, head = write(tmp_path / "a", 5), write(tmp_path / "b", 5)
    monkeypatch.chdir(tmp_path)
    verdicts = []
    for seed in (1, 2):  # two runs of two configurations each: four A/A comparisons
        out = tmp_path / f"aa{seed}.json"
        # 15 s holds 3 process pairs of one round here, as before (the budget never stops a run before
        # the 3 pairs an interval needs); 2 turns per side a round (A B B A) instead of 4 halve each
        # round, not the process pairs the interval is taken over, so a bias between the sides shows as before.
        code, _ = llmcheck_ab(
            capsys,
            str(base),
            str(head),
            "--ab-budget",
            "15s",
            "--ab-repeats",
            "2",
            "--seed",
            str(seed),
            "--set",
            "latency.batch_sizes=[4, 8]",
            "--json",
            str(out),
            *FAST,
        )
        doc = json.loads(out.read_text())
        verdicts += [r["verdict"] for r in doc["results"]]
        assert code == 0
        assert all(len(r["pairs"]) >= 3 for r in doc["results"])
    assert verdicts == ["no significant change"] * 4


def test_a_model_with_two_more_blocks_is_a_regression_in_every_output(tmp_path, monkeypatch, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    # 4 blocks against 2 (ADAPTIVE says why a 2x step): under CI's `pytest -n 2` 6 against 5 measured
    # only +10.6 % (CI 1.027-1.191), and 7 against 5 needed 4+ process pairs of 8 rounds (66 s).
    base, head = write(tmp_path / "base", 2), write(tmp_path / "head", 4)
    monkeypatch.chdir(tmp_path)
    code, table = llmcheck_ab(
        capsys,
        str(base),
        str(head),
        *ADAPTIVE,
        "--set",
        "latency.batch_sizes=[8]",
        "--json",
        "ab.json",
        "--markdown",
        "ab.md",
        "--html",
        "ab.html",
        *FAST,
    )
    doc = json.loads((tmp_path / "ab.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    jsonschema.validate(doc, ab_report.SCHEMA)
    (result,) = doc["results"]
    assert code == 1, table
    assert result["verdict"] == "regression", result["message"]
    assert result["estimate"]["ci_low"] > 1.05
    # the interval is over process pairs (at least 3), each pair serving up to --ab-recycle 2 rounds
    assert 3 <= result["estimate"]["n"] == result["process_pairs"] < len(result["pairs"])
    ratio = f"{result['estimate']['ratio']:.3f}"
    assert "1 REGRESSION" in table and ratio in table
    markdown = (tmp_path / "ab.md").read_text()
    assert "❌" in markdown and "| regression |" in markdown and ratio in markdown
    html = (tmp_path / "ab.html").read_text()
    assert html.count("<svg") == 1 and ratio in html and "regression" in html and "<script" not in html
    assert "Content-Security-Policy" in html


def test_git_ref_path_compares_a_commit_with_the_working_tree_and_removes_its_worktree(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    write(repo, 4)
    git = lambda *a: (
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *a],  # noqa: E731
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "four blocks")
    write(repo, 2)  # the working tree: two blocks fewer (about 2x faster; ADAPTIVE), in the sibling module
    monkeypatch.chdir(repo)
    code, table = llmcheck_ab(
        capsys,
        "git:HEAD:model.py",
        "model.py",
        *ADAPTIVE,
        "--set",
        "latency.batch_sizes=[8]",
        "--json",
        "ab.json",
        *FAST,
    )
    doc = json.loads((repo / "ab.json").read_text())
    assert code == 0
    assert doc["results"][0]["verdict"] == "improvement", table
    assert doc["base"]["commit"] == git("rev-parse", "HEAD").strip()
    assert git("worktree", "list", "--porcelain").count("worktree ") == 1  # only the main one is left


def test_a_bad_git_spec_or_threshold_is_a_usage_error(tmp_path, monkeypatch, capsys):
    model = write(tmp_path, 5)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["ab", str(model), str(model), "--threshold", "fast"]) == 2
    assert "--threshold 'fast'" in capsys.readouterr().err
    assert cli.main(["ab", "git:nope", str(model)]) == 2
    assert "expected git:REF:path" in capsys.readouterr().err


def test_configurations_are_chosen_by_terms_and_exact_ids():
    from llmcheck.registry import load_checks
    from llmcheck.settings import Params

    check = load_checks()["latency"]
    params = Params({**{k: p.default for k, p in check.params.items()}, "batch_sizes": [1, 8]})
    configs = ab.configurations(check, params, {}, "m", "forward")
    keys = [c.key for c in ab.select(configs, "bs=1 not bfloat16")]
    assert keys and all("bs=1-" in k and "bfloat16" not in k for k in keys)
    assert [c.key for c in ab.select(configs, exact=[configs[0].key])] == [configs[0].key]
    if "processes" in check.params:  # each A/B process measures only itself
        assert all(c.params["processes"] == 1 for c in configs)


def test_a_git_spec_names_a_ref_and_a_path():
    assert ab_sources.parse("git:main:models/m.py") == ("main", "models/m.py")
    assert ab_sources.parse("git:HEAD~1:./m.py") == ("HEAD~1", "./m.py")
    assert ab_sources.parse("model.py") is None


def test_the_pytest_option_measures_each_latency_item_against_base(run_llmcheck, pytester):
    from ab_model_sources import BLOCKS, STACK

    # The plumbing is under test here, not the sensitivity (benchmarks/ab_sensitivity.py). The option has no
    # --min-pairs, so its precision stop waits for 5 process pairs (the old 60 s); a 10 s budget instead
    # ends the run at the 3 process pairs an interval needs (a budget never ends it sooner). With 3 pairs
    # the interval is ratio * exp(+-2.48 sd) (t = 4.30): under `pytest -n 2` the pairs' log ratios have
    # shown sd 0.15 (6 vs 5 blocks: 1.167, CI 0.97-1.40 over ~5 pairs), which 8 vs 5 (~1.5) would not
    # clear. 16 blocks against 5 (~3x) does: it stays a regression with sd up to 0.45, e.g. one pair of
    # three slowed 2x; its forward (~6 ms) still takes 10 samples within a turn's 80 ms.
    write(pytester.path / "base", 5)
    (pytester.path / "blocks.py").write_text(BLOCKS.format(n=16))
    result = run_llmcheck(
        STACK,
        "-k",
        "latency",
        "--llmcheck-set",
        "latency.batch_sizes=[8]",
        "--llmcheck-set",
        'latency.precisions=["float32"]',
        "--llmcheck-ab-base",
        "base/model.py",
        "--llmcheck-ab-budget",
        "10s",
        "--llmcheck-ab-precision",
        "8%",
        "--llmcheck-html",
        "report.html",
        subprocess=True,
    )  # an in-process session after this one could not load its plugins
    record = result.by_check["latency"]
    ab_result = record["metrics"]["ab"]["results"][0]
    assert record["status"] == "failed" and ab_result["verdict"] == "regression", record["message"]
    assert "A/B vs BASE base/model.py" in record["message"]
    html = (pytester.path / "report.html").read_text()
    assert "A/B against BASE" in html and f"{ab_result['estimate']['ratio']:.3f}" in html
    assert "<svg" in html


def test_a_model_missing_from_base_is_an_error_item_that_names_it(run_llmcheck, pytester):
    from ab_model_sources import BLOCKS, STACK

    other = STACK.replace("def stack():", "def other_name():")
    (pytester.path / "base").mkdir()
    (pytester.path / "base" / "model.py").write_text(other)
    (pytester.path / "base" / "blocks.py").write_text(BLOCKS.format(n=5))
    (pytester.path / "blocks.py").write_text(BLOCKS.format(n=5))
    result = run_llmcheck(
        STACK,
        "-k",
        "latency",
        "--llmcheck-set",
        "latency.batch_sizes=[8]",
        "--llmcheck-set",
        'latency.precisions=["float32"]',
        "--llmcheck-ab-base",
        "base/model.py",
        subprocess=True,
    )
    assert "latency" in result.by_check, result.stderr.str()
    record = result.by_check["latency"]
    assert record["status"] == "error"
    assert "model 'stack' is not declared in BASE base/model.py (BASE declares: other_name)" in record["message"]


def ab_document(result: dict, side: dict, options: dict | None = None) -> dict:
    """An A/B document of one latency result, BASE and HEAD the same ``side``, over 4 rounds."""
    return ab_report.build(
        check="latency",
        metric="forward",
        statistic="min",
        base=side,
        head=side,
        rounds=4,
        options=dict(ab.Options().__dict__) if options is None else options,
        results=[result],
        environment={},
        producer={},
        started=0.0,
        finished=1.0,
    )


def test_user_strings_are_escaped_in_the_html_and_markdown_outputs():
    from llmcheck.reports import ab_html

    pairs = [
        {"round": i, "first": "BASE", "base_ms": 1.0, "head_ms": 1.0 + i / 100, "ratio": 1.0 + i / 100}
        for i in range(4)
    ]
    result = {
        "id": "bs=1-<b>x</b>",
        "model": "m",
        "variant": {},
        "verdict": "no significant change",
        "stop": "budget",
        "message": "no significant change <img src=x>",
        "pairs": pairs,
        "base_median_ms": 1.0,
        "head_median_ms": 1.02,
        "estimate": {"n": 4, "ratio": 1.015, "ci_low": 0.99, "ci_high": 1.04, "half_width": 0.025},
        "detectable": None,
    }
    doc = ab_document(result, {"spec": "<script>alert(1)</script>.py", "path": "p", "commit": None})
    html = ab_html.render(doc)
    assert "<script>" not in html and "&lt;script&gt;" in html and "<img" not in html and "<b>x" not in html
    assert html.count("<svg") == 1 and "1.015" in html
    markdown = ab_report.markdown(doc)
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown and "1.015" in markdown


def test_the_reports_describe_rounds_on_warm_process_pairs_as_the_engine_runs_them():
    from llmcheck.reports import ab_html

    pairs = [
        {"round": i + 1, "process": i // 2 + 1, "first": "BASE", "base_ms": 1.0, "head_ms": 1.0, "ratio": 1.0}
        for i in range(4)
    ]
    estimate = {"n": 2, "ratio": 1.0, "ci_low": 0.99, "ci_high": 1.01, "half_width": 0.01}
    result = {"id": "bs=1", "model": "m", "verdict": "no significant change", "message": "-", "pairs": pairs}
    result.update(estimate=estimate, base_median_ms=1.0, head_median_ms=1.0)
    side = {"spec": "m.py", "path": "p", "commit": None}

    def document(**options):
        options = {**ab.Options().__dict__, **options}
        return ab_document(result, side, {k: v for k, v in options.items() if v is not None})

    warm = "a warm pair of worker processes (one BASE, one HEAD) serves up to 8 rounds before a fresh pair starts"
    default = document()
    record = {"metrics": {"ab": default}}
    for text in (ab_report.markdown(default), ab_html.render(default), ab_html.record_view(record)["plan"]):
        assert warm in text and "fresh processes" not in text and "fresh BASE and HEAD processes" not in text
    assert "min of each turn's samples" in ab_report.markdown(default)
    # 4 rounds in 2 warm process pairs: the table counts both, the interval's unit in brackets
    assert "| rounds (process pairs) |" in ab_report.markdown(default) and "| 4 (2) |" in ab_report.markdown(default)
    assert "4 (2)" in ab_report.table(default) and "<th>rounds (process pairs)</th>" in ab_html.render(default)
    every_round = "a fresh pair of worker processes (one BASE, one HEAD) every round"
    assert every_round in ab_report.markdown(document(recycle=1))
    # a document from before pairs were reused has no recycle: its rounds each had a fresh pair
    assert every_round in ab_html.render(document(recycle=None))
