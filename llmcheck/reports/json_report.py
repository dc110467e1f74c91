"""The JSON run document: build, write atomically, read back with validation."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from llmcheck.reports.files import atomic_write_text
from llmcheck.results import STATUSES, strict_json

# 1.1: each record has ``advisory`` (what-if findings that did not gate) and the summary counts the
# records that have some; readers of 1.0 documents get an empty list (results.Result.from_json).
SCHEMA_VERSION = "1.1"


class ReportError(ValueError):
    """A report file is missing, truncated, or not an llmcheck report of a known schema."""


def build(
    records: list[dict[str, Any]],
    environment: dict[str, Any],
    producer: dict[str, Any],
    started: float,
    finished: float,
    interrupted: bool = False,
) -> dict[str, Any]:
    """One run's document: schema, producer, environment, summary counts and per-item records."""
    counts = {s: 0 for s in STATUSES}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    document = strict_json(
        {
            "schema_version": SCHEMA_VERSION,
            "producer": producer,
            "environment": environment,
            "started_at": started,
            "finished_at": finished,
            "interrupted": interrupted,
            "summary": {"total": len(records), **counts, "advisory": sum(bool(r.get("advisory")) for r in records)},
            "results": records,
        }
    )
    document["digest"] = content_digest(document)
    return document


def content_digest(document: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything but the digest: an edit after writing shows."""
    body = {k: v for k, v in document.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write(path: str | os.PathLike, document: dict[str, Any]) -> Path:
    """Write ``document`` as strict JSON, atomically: readers never see half a file."""
    return atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False))


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Load a report; a truncated, hand-broken or foreign file is a ReportError, not a warning."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot read report {path}: {exc}") from exc
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}); was the file truncated or edited?") from exc
    if not isinstance(doc, dict) or "schema_version" not in doc or not isinstance(doc.get("results"), list):
        raise ReportError(f"{path} is not an llmcheck report (no schema_version or results)")
    major = str(doc["schema_version"]).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ReportError(
            f"{path} has schema version {doc['schema_version']}; this llmcheck reads {SCHEMA_VERSION.split('.')[0]}.x"
        )
    if "digest" in doc and doc["digest"] != content_digest(doc):
        raise ReportError(f"{path}: content digest does not match; the report was edited after llmcheck wrote it")
    for i, r in enumerate(doc["results"]):
        if not isinstance(r, dict) or r.get("status") not in STATUSES or "id" not in r:
            raise ReportError(f"{path}: result #{i} is malformed (needs id and a status in {', '.join(STATUSES)})")
    return doc


def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")
