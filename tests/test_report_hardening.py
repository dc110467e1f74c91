"""Reports under hostile conditions (issue 16, points 1, 5, 6, 7): a report that cannot be written
where asked, untrusted text in Markdown and the terminal, artifacts that must outlive the session,
and malformed reports given to ``llmcheck compare`` / ``report``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import report_data
from model_sources import variant

from llmcheck.cli import main
from llmcheck.plugins.report_writer import REPORT_ELSEWHERE, ReportWriter
from llmcheck.reports import html, json_report, markdown
from llmcheck.reports.plain import printable

TWO_CHECKS = ("-k", "eval or causal")


def _fallback(result) -> Path:
    line = next(ln for ln in result.outlines if "JSON report NOT written to" in ln)
    return Path(line.rsplit("written to ", 1)[1].removesuffix(" instead"))


def test_a_report_folder_that_cannot_be_written_sends_the_report_to_a_fallback_and_every_check_runs(pytester):
    (pytester.path / "model.py").write_text(variant("V, D, T = 64, 32, 32", "V, D, T = 64, 32, 32"))
    (pytester.path / "blocker").write_text("a file where the report's folder should be")
    result = pytester.runpytest_subprocess(
        "--llmcheck", "model.py", "-p", "no:cacheprovider", "--llmcheck-json", "blocker/report.json", *TWO_CHECKS
    )
    result.stdout.fnmatch_lines(["*llmcheck JSON report NOT written to blocker/report.json (*Error*)*instead*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert result.ret == REPORT_ELSEWHERE  # every item passed, but CI would not find the report
    fallback = _fallback(result)
    try:
        doc = json_report.read(fallback)
        assert sorted(r["check"] for r in doc["results"]) == ["causal", "eval"]
        assert all(r["status"] == "passed" for r in doc["results"])
        result.stdout.fnmatch_lines(["*LlmcheckReportWarning*could not write its JSON report*"])
    finally:
        fallback.unlink(missing_ok=True)


def test_a_full_disk_does_not_stop_the_session(pytester):
    disk = pytester.path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    assert mounted.returncode == 0, f"this test mounts a 64 KiB tmpfs (needs root): {mounted.stderr.decode()}"
    try:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last block
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        (pytester.path / "model.py").write_text(variant("V, D, T = 64, 32, 32", "V, D, T = 64, 32, 32"))
        result = pytester.runpytest_subprocess(
            "--llmcheck", "model.py", "-p", "no:cacheprovider", "--llmcheck-json", "disk/report.json", *TWO_CHECKS
        )
        result.stdout.fnmatch_lines(["*JSON report NOT written to disk/report.json (OSError: *No space left*"])
        result.stdout.fnmatch_lines(["*2 passed*"])
        assert result.ret == REPORT_ELSEWHERE
        fallback = _fallback(result)
        assert [r["status"] for r in json_report.read(fallback)["results"]] == ["passed", "passed"]
        fallback.unlink()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


HOSTILE = "leak @octocat: see https://evil.example/x or www.evil.example; `code` \x1b[2J\x1b]0;pwned\x07 done"


def test_markdown_neutralises_mentions_autolinks_and_code_span_breakouts():
    text = markdown.cell(HOSTILE)
    assert "@octocat" not in text and "@\u2060octocat" in text
    assert "https://" not in text and "www.evil" not in text
    assert "\\`code\\`" in text
    assert markdown.code("abc`def\n`x") == "`abcdef x`"
    base = report_data.document([report_data.record("eval", message=HOSTILE)])
    head = report_data.document(
        [report_data.record("eval", "failed", message=HOSTILE, model="@team-leads https://x.example")]
    )
    head["environment"]["git_commit"] = "`@everyone"
    from llmcheck.reports import compare

    out = markdown.comparison(compare.compare(base, head))
    assert "@team-leads" not in out and "https://x" not in out
    # the commit's code span lost its inner backtick instead of closing early (no mention inside code)
    assert "`@everyone`" in out and "``@everyone" not in out


def test_the_terminal_never_receives_escape_sequences_from_model_code(run_llmcheck):
    source = variant(
        "    def forward(self, idx):\n",
        "    def forward(self, idx):\n        raise RuntimeError('boom \\x1b[2J\\x1b[1;1H\\x1b]0;pwned\\x07 hidden')\n",
    )
    result = run_llmcheck(source, "-k", "eval")
    out = result.stdout.str()
    assert "boom" in out and "hidden" in out
    assert "\x1b]0;" not in out and "\x1b[2J" not in out
    assert printable("a\x1b[31mb\x9b1mc\td\n\x07") == "abc\td\n"


def test_artifacts_are_copied_next_to_the_report_and_the_page_links_them(tmp_path, pytester):
    scratch = tmp_path / "session-temp"
    scratch.mkdir()
    (scratch / "rank1.log").write_text("rank 1 said this")
    out = tmp_path / "out"
    writer = ReportWriter(pytester.parseconfig(), str(out / "report.json"), str(tmp_path / "pages" / "r.html"))
    record = report_data.record("distributed", "failed", artifacts={"rank1.log": str(scratch / "rank1.log")})
    writer.keep_artifacts(record)
    kept = record["artifacts"]["rank1.log"]
    assert not Path(kept).is_absolute() and (out / kept).read_text() == "rank 1 said this"
    writer.records[record["id"]] = record
    writer.write(html=True)
    scratch.joinpath("rank1.log").unlink()  # the session's temp folder goes; the copy stays
    assert (out / kept).exists()
    page = (tmp_path / "pages" / "r.html").read_text()
    assert f'href="../out/{kept}"' in page
    # a hand-made record cannot make the page link elsewhere
    hostile = report_data.record("eval", artifacts={"a": "javascript:alert(1)", "b": "/etc/passwd", "c": "../x"})
    page = html.render(report_data.document([hostile]), links_from=".")
    assert "href=" not in page.split("artifacts:")[1].split("</p>")[0]


def _cli(*args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "llmcheck.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stderr


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.json"
    json_report.write(path, report_data.document([report_data.latency(1, 1.0)]))
    return path


def _bad(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text, said",
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("truncated.json", '{"schema_version": "1.1", "results": [', "not valid JSON"),
        ("foreign.json", '{"hello": 1}', "not an llmcheck report"),
    ],
    ids=["deep", "truncated", "foreign"],  # not the 200 kB text: test ids go into the environment
)
def test_malformed_input_exits_2_with_one_line_naming_the_file(tmp_path, good, name, text, said):
    bad = _bad(tmp_path, name, text)
    for args in (["compare", str(good), str(bad)], ["report", str(bad), "--markdown"]):
        code, err = _cli(*args)
        assert code == 2, err
        assert err.count("\n") == 1 and name in err and said in err and "Traceback" not in err


def test_a_field_of_the_wrong_type_is_named_and_exits_2(tmp_path, good):
    doc = json.loads(good.read_text())
    doc["results"][0]["samples"] = [1]
    doc.pop("digest")
    bad = _bad(tmp_path, "typed.json", json.dumps(doc))
    code, err = _cli("compare", str(good), str(bad), "--allow-unsigned")
    assert code == 2 and "typed.json: result #0" in err and "samples is list, expected an object" in err
    assert "Traceback" not in err


def test_a_baseline_without_its_digest_is_refused_unless_allowed(tmp_path, good, capsys):
    doc = json.loads(good.read_text())
    doc.pop("digest")
    unsigned = _bad(tmp_path, "unsigned.json", json.dumps(doc))
    assert main(["compare", str(unsigned), str(good)]) == 2
    assert "unsigned.json has no content digest" in capsys.readouterr().err
    assert main(["compare", str(unsigned), str(good), "--allow-unsigned"]) == 0
    edited = json.loads(good.read_text())
    edited["results"][0]["status"] = "failed"
    assert main(["compare", str(_bad(tmp_path, "edited.json", json.dumps(edited))), str(good)]) == 2
    assert "digest does not match" in capsys.readouterr().err


def test_free_text_in_the_report_is_capped_with_a_visible_marker():
    huge = "start " + "x" * 3_000_000 + " end"
    record = report_data.record("eval", "failed", message=huge, trace=huge, output=huge, metrics={"culprit": huge})
    doc = json_report.build([record], {}, {"name": "llmcheck"}, 0.0, 1.0)
    r = doc["results"][0]
    for key, limit in json_report.LIMITS.items():
        assert len(r[key]) < limit + 100 and r[key].startswith("start ") and r[key].endswith(" end")
        assert "bytes cut ...]" in r[key]
    assert len(r["metrics"]["culprit"]) < json_report.METRIC_TEXT_LIMIT + 100
    assert len(json.dumps(doc)) < 300_000
    assert record["message"] == huge  # the caller's record is left alone
