"""Each check's parameter table as Markdown, generated from the registry so the docs cannot drift.

The pages under ``docs/checks/`` hold prose written by hand and, between ``<!-- params:begin -->``
and ``<!-- params:end -->``, the table rendered here from each `Param` (type, default, meaning,
bounds, choices). ``llmcheck checks --write-docs docs`` rewrites those blocks, and
``tests/test_docs.py`` fails when a page differs from what this module renders. The global
settings table in ``docs/running-and-settings.md`` is kept the same way.

Pure and torch-free: it reads `Check` and `Param` objects it is given and imports neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- params:begin -->", "<!-- params:end -->"
CHECKS_DIR = "checks"  # docs/checks/<name>.md, one page per check
SETTINGS_PAGE = "running-and-settings.md"  # holds the global settings block
_BLOCK = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.S)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, no stray HTML or emphasis."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def _type(p) -> str:
    item = getattr(p.item_type, "__name__", None)
    return f"{p.type.__name__}[{item}]" if item else p.type.__name__


def _default(value: Any) -> str:
    """As a user writes it in pyproject.toml or ``--llmcheck-set`` (JSON); ``none`` for unset."""
    if value is None:
        return "none"
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return "`" + text.replace("|", "\\|") + "`"


def _meaning(p) -> str:
    """The parameter's doc, then its bounds and choices as the settings code enforces them."""
    each = "each " if p.type is list else ""  # a list's bounds and choices apply to its items
    extra = []
    if p.minimum is not None and p.maximum is not None:
        extra.append(f"{each}between {p.minimum:g} and {p.maximum:g}")
    elif p.minimum is not None:
        extra.append(f"{each}≥ {p.minimum:g}")
    elif p.maximum is not None:
        extra.append(f"{each}≤ {p.maximum:g}")
    if p.choices:
        extra.append(f"{each}one of " + ", ".join(f"`{c}`" for c in p.choices))
    return "; ".join([_cell(p.doc), *extra])


def param_table(params: Mapping[str, Any]) -> str:
    """The Markdown table of a name -> `Param` mapping, in declaration order."""
    rows = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {_type(p)} | {_default(p.default)} | {_meaning(p)} |" for name, p in params.items()]
    return "\n".join(rows) + "\n"


def check_block(check, params: Mapping[str, Any]) -> str:
    """What a check page holds between the markers: where to set the parameters, then the table.

    ``params`` is the check's full parameter set (``llmcheck.settings.check_params``: its own plus
    ``timeout``), passed in so that this module stays a renderer."""
    needs = ", ".join(f"`{n}`" for n in sorted(check.needs)) or "nothing beyond a model"
    lead = (
        f"Family `{check.family}`; needs {needs}. Set in `[tool.llmcheck.checks.{check.name}]`,\n"
        f'`@llmcheck.model(checks={{"{check.name}": {{...}}}})` or `--llmcheck-set {check.name}.NAME=VALUE`\n'
        "([settings](../running-and-settings.md#settings))."
    )
    return f"{lead}\n\n{param_table(params)}"


def check_section(check, params: Mapping[str, Any]) -> str:
    """One check for ``llmcheck checks --markdown``: heading, summary, the generated block."""
    return f"## {check.name}\n\n{check.summary}\n\n{check_block(check, params)}"


def read_block(text: str) -> str | None:
    """The generated part of a page, or None when it has no markers."""
    found = _BLOCK.search(text)
    return found.group(1) if found else None


def replace_block(text: str, block: str) -> str:
    """The page with its generated part replaced; a page without markers gets them at the end."""
    if read_block(text) is None:
        return text.rstrip("\n") + f"\n\n## Parameters\n\n{BEGIN}\n{block}{END}\n"
    return _BLOCK.sub(lambda _: f"{BEGIN}\n{block}{END}", text, count=1)


@dataclass(frozen=True)
class Expected:
    """What one generated page must hold: its path under the docs folder and its block."""

    path: str
    block: str
    title: str  # heading of a page that does not exist yet


def expected(checks: Mapping[str, Any], params_of, global_params: Mapping[str, Any]) -> list[Expected]:
    """Every generated block of the docs: one per check page, and the global settings table."""
    pages = [
        Expected(f"{CHECKS_DIR}/{name}.md", check_block(c, params_of(c)), f"# {name}\n\n{c.summary}\n")
        for name, c in checks.items()
    ]
    return pages + [Expected(SETTINGS_PAGE, param_table(global_params), "# Running and settings\n")]


def drift(docs: Path, wanted: list[Expected]) -> list[str]:
    """What differs between the docs folder and the generated blocks; empty when none does."""
    problems = []
    for e in wanted:
        page = docs / e.path
        if not page.is_file():
            problems.append(f"{e.path}: missing (a registered check needs a page)")
        elif (block := read_block(page.read_text(encoding="utf-8"))) is None:
            problems.append(f"{e.path}: no {BEGIN} ... {END} block")
        elif block != e.block:
            problems.append(f"{e.path}: parameter table differs from the registry")
    known = {e.path for e in wanted}
    problems += [
        f"{CHECKS_DIR}/{p.name}: no registered check is named {p.stem!r}"
        for p in sorted((docs / CHECKS_DIR).glob("*.md"))
        if f"{CHECKS_DIR}/{p.name}" not in known
    ]
    return problems


def write(docs: Path, wanted: list[Expected]) -> list[Path]:
    """Rewrite each generated block in place (creating a stub page for a new check); the changed paths."""
    changed = []
    for e in wanted:
        page = docs / e.path
        old = page.read_text(encoding="utf-8") if page.is_file() else e.title
        new = replace_block(old, e.block)
        if new != old:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed
