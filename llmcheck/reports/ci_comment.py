"""``llmcheck ci``'s pull-request comment: check statuses against ``main`` and the A/B verdicts, in one.

Reads the ci document only (built by `llmcheck.ab.cli`). The first line is the marker
``<!-- llmcheck -->``, which the GitHub Action looks for to update its comment in place rather
than add one per push. Every user string is escaped for a table cell (`markdown.cell`).
"""

from __future__ import annotations

from typing import Any

from llmcheck.reports.ab_report import ICONS, rounds
from llmcheck.reports.markdown import cell

MARKER = "<!-- llmcheck -->"
MAX_ROWS = 50


def markdown(doc: dict[str, Any]) -> str:
    """The whole comment: verdict line, the checks' statuses, the A/B table, what was compared."""
    lines = [MARKER, _headline(doc), ""]
    lines += _checks(doc["checks"], doc["gate"])
    lines += [""] + _performance(doc)
    lines += ["", _footer(doc)]
    return "\n".join(lines) + "\n"


def _headline(doc: dict[str, Any]) -> str:
    n = doc["blocking"]
    if doc["verdict"] == "error":
        return "## ⚠️ llmcheck could not judge this change"
    if n:
        return f"## ❌ llmcheck: {n} blocking regression{'s' if n != 1 else ''}"
    return "## ✅ llmcheck: nothing blocks this change"


def _short(commit: Any) -> str:
    return cell(str(commit)[:10]) if commit else "?"


def _checks(checks: dict[str, Any], gate: list[str]) -> list[str]:
    against = checks.get("against", "")
    if checks.get("error"):
        return [f"**Checks** against {cell(against)}: {cell(checks['error'])}"]
    rows = checks["rows"]
    blocking = [r for r in rows if r["blocking"]]
    counts = ", ".join(f"{n} {cell(status)}" for status, n in checks.get("head_summary", {}).items())
    gated = "every check" if "all" in gate else (", ".join(cell(g) for g in gate) or "no check")
    out = [
        f"**Checks** on this change ({counts}) against {cell(against)}: "
        f"{len(blocking)} blocking status change{'s' if len(blocking) != 1 else ''} (gated: {gated}).",
    ]
    out += [f"> warning: {cell(w)}" for w in checks.get("warnings", [])]
    if rows:
        out += ["", "| | item | before | now | note |", "|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: not r["blocking"])[:MAX_ROWS]:
            icon = "❌ blocks" if r["blocking"] else ("✅" if r["verdict"] == "improvement" else "•")
            out.append(f"| {icon} | {cell(r['id'])} | {cell(r['base'])} | {cell(r['head'])} | {cell(r['note'])} |")
        if len(rows) > MAX_ROWS:
            out.append(f"\n({len(rows) - MAX_ROWS} more status changes in the JSON document)")
    still = checks.get("still_failing", [])
    if still:
        names = ", ".join(cell(i) for i in still[:10]) + (", ..." if len(still) > 10 else "")
        out += ["", f"Already failing before this change and still failing (not blocking): {names}"]
    return out


def _performance(doc: dict[str, Any]) -> list[str]:
    o = doc["options"]
    out = [
        f"**Performance**: `llmcheck ab`, BASE {_short(doc['base'].get('commit'))} (the merge base) and HEAD "
        f"{_short(doc['head'].get('commit'))} measured interleaved on this runner; budget {o['ab_budget_s']:g} s, "
        f"minimum effect ±{o['min_effect']:.0%}.",
    ]
    docs = doc.get("ab") or []
    if not docs:
        return out + ["", "No performance items were measured."]
    out += [
        "",
        "| | config | rounds (process pairs) | BASE | HEAD | HEAD/BASE | 95% CI | could have detected | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for part in docs:
        if "error" in part:
            notes.append(f"- {cell(part['path'])}: {cell(part['error'])}")
            continue
        for r in part["results"]:
            out.append(_ab_row(part, r))
            notes.append(f"- {cell(r['model'] + '::' + r['id'])}: {cell(r['message'])}")
    return out + [""] + notes


def _ab_row(part: dict[str, Any], r: dict[str, Any]) -> str:
    est = r["estimate"]
    ratio = "-" if est.get("ratio") is None else f"{est['ratio']:.3f}"
    ci = "-" if est.get("ci_low") is None else f"{est['ci_low']:.3f}-{est['ci_high']:.3f}"
    found = r.get("detectable") or {}
    could = f"+{found['slowdown']:.1%}" if found.get("slowdown") is not None else "-"
    ms = lambda v: "-" if v is None else f"{v:.4g} ms"  # noqa: E731
    where = f"{part['head']['spec']}::{r['model']}::{r['id']}"
    return (
        f"| {ICONS.get(r['verdict'], '')} | {cell(where)} | {rounds(r)} | "
        f"{ms(r['base_median_ms'])} | {ms(r['head_median_ms'])} | {ratio} | {ci} | {could} | {cell(r['verdict'])} |"
    )


def _footer(doc: dict[str, Any]) -> str:
    return (
        "<sub>Statuses are compared with the stored report (passed → failed blocks; an item already failing "
        "before this change does not). Timings of two separate runs drift more than a 10% change on shared "
        "runners, so performance is judged only by the interleaved A/B run above. "
        f"Written by `llmcheck ci` in {doc.get('duration_s', 0):.0f} s.</sub>"
    )
