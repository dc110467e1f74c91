"""The docs fit their reader and cannot drift from the code.

README.md stays short and every relative link in it and under docs/ resolves (anchors included);
each registered check has a page under docs/checks/ whose parameter table is the one the registry
generates (``llmcheck checks --write-docs docs`` rewrites them), and no page outlives its check.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from llmcheck.cli import main
from llmcheck.registry import load_checks
from llmcheck.reports import check_docs
from llmcheck.settings import GLOBAL_PARAMS, check_params

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def wanted() -> list[check_docs.Expected]:
    return check_docs.expected(load_checks(), check_params, GLOBAL_PARAMS)


def prose(text: str) -> str:
    """Markdown without code blocks and code spans, where a link-like text is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    for title in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` whose file, or heading, does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


def test_the_readme_is_at_most_200_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail under docs/"


def test_every_relative_link_in_the_readme_and_the_docs_resolves():
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    broken = [f"{page.relative_to(ROOT)}: {b}" for page in pages for b in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_finds_a_missing_page_and_a_missing_heading_but_not_links_in_code(tmp_path):
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n\n## The `ab` part: 2.0\n\n[fine](#the-ab-part-20) [gone](b.md) [anchor](a.md#nope) "
        "[web](https://example.com) `[code](c.md)`\n\n```\n[block](d.md)\n```\n"
    )
    assert broken_links(page) == ["b.md (no such file)", "a.md#nope (no heading #nope in a.md)"]


def test_the_readme_gives_the_test_command_ci_runs():
    lines = (ROOT / ".ci/run").read_text().splitlines()
    command = [line.split("||")[0].strip() for line in lines if line.startswith("pytest ")][-1]
    assert f"\n{command}\n" in README.read_text(encoding="utf-8")


def test_the_readme_check_table_links_every_registered_check_with_its_family():
    rows = re.findall(r"^\| \[`([\w-]+)`\]\(docs/checks/([\w-]+)\.md\) \| ([\w-]+) \|", README.read_text(), re.M)
    assert {name: family for name, _, family in rows} == {c.name: c.family for c in load_checks().values()}
    assert all(name == page for name, page, _ in rows)


def test_every_check_page_holds_the_parameter_table_the_registry_generates():
    problems = check_docs.drift(DOCS, wanted())
    assert not problems, "docs drifted from the code; run `llmcheck checks --write-docs docs`:\n" + "\n".join(problems)


def test_drift_is_found_for_a_changed_table_a_missing_page_and_a_page_without_a_check(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    page = docs / "checks" / "checkpoint.md"
    page.write_text(page.read_text().replace("| `atol` | float | `0.0` |", "| `atol` | float | `0.5` |"))
    (docs / "checks" / "eval.md").unlink()
    (docs / "checks" / "retired.md").write_text("# retired\n")
    assert check_docs.drift(docs, wanted()) == [
        "checks/checkpoint.md: parameter table differs from the registry",
        "checks/eval.md: missing (a registered check needs a page)",
        "checks/retired.md: no registered check is named 'retired'",
    ]


def test_write_docs_rewrites_only_the_generated_blocks_and_makes_a_page_for_a_new_check(tmp_path, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    page = docs / "checks" / "checkpoint.md"
    prose_before = page.read_text().split(check_docs.BEGIN)[0]
    page.write_text(page.read_text().replace("`0.0`", "`9`"))
    (docs / "checks" / "eval.md").unlink()
    assert main(["checks", "--write-docs", str(docs)]) == 0
    assert "rewrote" in capsys.readouterr().err
    assert check_docs.drift(docs, wanted()) == []
    assert page.read_text().split(check_docs.BEGIN)[0] == prose_before
    assert (docs / "checks" / "eval.md").read_text().startswith("# eval\n")
    assert main(["checks", "--write-docs", str(docs)]) == 0 and capsys.readouterr().err == ""


def test_checks_markdown_prints_a_checks_generated_table(capsys):
    assert main(["checks", "--markdown", "checkpoint"]) == 0
    out = capsys.readouterr().out
    check = load_checks()["checkpoint"]
    assert out.startswith("## checkpoint\n\n" + check.summary)
    assert check_docs.check_block(check, check_params(check)) in out
    assert '| `formats` | list[str] | `["torch", "safetensors"]` |' in out


def test_checks_markdown_without_a_name_prints_every_check_and_an_unknown_name_is_refused(capsys):
    assert main(["checks", "--markdown"]) == 0
    headings = re.findall(r"^## (\S+)$", capsys.readouterr().out, re.M)
    assert headings == list(load_checks())
    assert main(["checks", "--markdown", "no-such-check"]) == 2
    assert "no check named 'no-such-check'; have amp, attention, batch" in capsys.readouterr().err
