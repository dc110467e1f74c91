"""Markdown for pull-request comments and ``$GITHUB_STEP_SUMMARY``: a comparison, or one run's summary.

Every user-controlled string is escaped for a GitHub table cell: HTML-significant characters become
entities (GitHub would otherwise render tags), Markdown punctuation is backslash-escaped, and what
GitHub would turn into a notification or a link is broken with a word joiner (U+2060): ``@user``
mentions, bare ``https://`` / ``www.`` autolinks and e-mail addresses. Text inside a code span
cannot be escaped (backslashes are literal there), so `code` drops backticks instead.
"""

from __future__ import annotations

import re
from typing import Any

from llmcheck.results import FAILING, STATUSES

ORDER = ("regression", "inconclusive", "within noise", "improvement", "new", "changed", "unchanged")
ICONS = {
    "regression": "❌",
    "improvement": "✅",
    "new": "🆕",
    "within noise": "〰️",
    "inconclusive": "❔",
    "changed": "•",
    "unchanged": "",
}
MAX_ROWS = 50


JOINER = "\u2060"  # word joiner: invisible, and no mention or autolink spans it
MENTION = re.compile(r"@(?=[\w-])")
AUTOLINK = re.compile(r"(?i)\b(https?|ftp)://|\bwww\.")


def cell(value: Any) -> str:
    """``value`` as text that stays text inside a GitHub Markdown table cell: no tags, no Markdown,
    no @mentions, no autolinks, on one line."""
    text = "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "\\`*_[]|#~":
        text = text.replace(ch, "\\" + ch)
    return " ".join(_inert(text).split())


def code(value: Any) -> str:
    """``value`` as an inline code span that cannot be closed early: backticks and line breaks removed."""
    text = " ".join(str(value).replace("`", "").split())
    return f"`{text}`" if text else ""


def _inert(text: str) -> str:
    text = MENTION.sub("@" + JOINER, text)
    return AUTOLINK.sub(lambda m: m.group(0).replace(":", ":" + JOINER).replace(".", JOINER + "."), text)


def comparison(result: dict[str, Any]) -> str:
    """The comparison as Markdown: verdict line, warnings, the gating rows, other changes folded."""
    n = result["regressions"]
    head = (
        "❌ **llmcheck compare: {} regression{}**".format(n, "" if n == 1 else "s")
        if n
        else "✅ **llmcheck compare: no regressions**"
    )
    lines = [head, "", _sides(result), ""]
    lines += [f"> ⚠️ {cell(w)}" for w in result["warnings"]] + ([""] if result["warnings"] else [])
    main = [r for r in result["rows"] if r["verdict"] not in ("changed", "unchanged")]
    other = [r for r in result["rows"] if r["verdict"] == "changed"]
    main.sort(key=lambda r: ORDER.index(r["verdict"]))
    if main:
        lines += _table(main)
    else:
        lines.append(f"{result['paired']} checks compared; no status changes and no significant shifts.")
    if other:
        lines += [
            "",
            f"<details><summary>{len(other)} other metric change{'s' if len(other) != 1 else ''} "
            "(not gated: add a threshold with --fail-on to gate one)</summary>",
            "",
            *_table(other),
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def _sides(result: dict[str, Any]) -> str:
    def side(name, s):
        commit = f" {code(str(s['commit'])[:12])}" if s.get("commit") else ""
        return f"{name}{commit} ({s['items']} checks{', interrupted' if s.get('interrupted') else ''})"

    rules = result["rules"]
    extra = f"; thresholds {', '.join(cell(t) for t in rules['thresholds'])}" if rules["thresholds"] else ""
    return (
        f"{side('BASE', result['base'])} → {side('HEAD', result['head'])}; {result['paired']} paired. "
        f"Samples: Mann-Whitney U at alpha {rules['alpha']:g} and a minimum effect of {rules['min_effect']:.0%}{extra}."
    )


def _table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| | check | what | BASE | HEAD | change | p | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows[:MAX_ROWS]:
        what = r["kind"] if not r["name"] else f"{r['kind']} {r['name']}"
        change = "" if r["change"] is None else f"{r['change']:+.1%}"
        p = "" if r["p_value"] is None else f"{r['p_value']:.2g}"
        out.append(
            f"| {ICONS[r['verdict']]} {r['verdict']} | {cell(r['id'])} | {cell(what)} | {cell(r['base'])} | "
            f"{cell(r['head'])} | {change} | {p} | {cell(r['note'])} |"
        )
    if len(rows) > MAX_ROWS:
        out.append(f"\n… and {len(rows) - MAX_ROWS} more rows (`llmcheck compare --json` has them all)")
    return out


def run(document: dict[str, Any]) -> str:
    """One run's summary: counts per status, then every check that did not pass, with its message."""
    summary = document.get("summary") or {}
    counts = ", ".join(f"{summary[s]} {s}" for s in STATUSES if summary.get(s)) or "no checks ran"
    bad = [r for r in document["results"] if r["status"] in FAILING]
    advised = [(r, a) for r in document["results"] for a in r.get("advisory") or ()]
    note = f" ({len({r['id'] for r, _ in advised})} with advisory findings)" if advised else ""
    lines = [f"{'❌' if bad else '✅'} **llmcheck: {counts}**{note}", ""]
    if document.get("interrupted"):
        lines += ["> ⚠️ the run was interrupted: the report holds only the checks that finished", ""]
    if bad:
        lines += ["| status | check | message |", "|---|---|---|"]
        lines += [
            f"| {r['status']} | {cell(r['id'])} | {cell(str(r.get('message', ''))[:500])} |" for r in bad[:MAX_ROWS]
        ]
    if advised:
        lines += [
            *([""] if bad else []),
            "⚠️ **advisory, not gated**: what-ifs the model file does not declare (gate them with "
            "`@llmcheck.model(ships=[...])` or the check's `gate` setting)",
            "",
            "| advisory | check | finding |",
            "|---|---|---|",
        ]
        lines += [f"| ⚠️ advisory | {cell(r['id'])} | {cell(str(a)[:500])} |" for r, a in advised[:MAX_ROWS]]
    return "\n".join(lines) + "\n"
