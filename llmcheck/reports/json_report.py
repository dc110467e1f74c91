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
    records = [capped(r) for r in records]
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


# Free text from model code is bounded in the report: a model that prints a gigabyte or raises with a
# megabyte message must not make a report nobody can open. Head and tail are kept around a marker.
LIMITS = {"message": 8_000, "trace": 64_000, "output": 64_000}
METRIC_TEXT_LIMIT = 4_000  # any string inside metrics (culprit frames, examples, stacks)


def cap_text(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: the first and last parts around ``[... N bytes cut ...]``."""
    if len(text) <= limit:
        return text
    head, tail = limit // 3, limit - limit // 3
    cut = len(text[head : len(text) - tail].encode("utf-8", "replace"))
    return f"{text[:head]}\n[... {cut} bytes cut ...]\n{text[len(text) - tail :]}"


def capped(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` whose free-text fields and metric strings are within their limits."""
    out = dict(record)
    for key, limit in LIMITS.items():
        if isinstance(out.get(key), str):
            out[key] = cap_text(out[key], limit)
    if isinstance(out.get("metrics"), dict):
        out["metrics"] = _cap_strings(out["metrics"])
    return out


def _cap_strings(value: Any) -> Any:
    if isinstance(value, str):
        return cap_text(value, METRIC_TEXT_LIMIT)
    if isinstance(value, dict):
        return {k: _cap_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cap_strings(v) for v in value]
    return value


def content_digest(document: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything but the digest: an edit after writing shows."""
    body = {k: v for k, v in document.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write(path: str | os.PathLike, document: dict[str, Any]) -> Path:
    """Write ``document`` as strict JSON, atomically: readers never see half a file."""
    return atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False))


def read(path: str | os.PathLike, allow_unsigned: bool = False) -> dict[str, Any]:
    """Load a report; a truncated, hand-broken, unsigned or foreign file is a ReportError (one line
    naming the file and what is wrong), never a traceback. ``allow_unsigned`` accepts a document
    without its ``digest`` (a report not written by llmcheck, or one whose digest was removed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read report {path}: {exc}") from exc
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ReportError(f"{path}: JSON nested too deeply to be an llmcheck report") from None
    except ValueError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}); was the file truncated or edited?") from exc
    if not isinstance(doc, dict) or "schema_version" not in doc or not isinstance(doc.get("results"), list):
        raise ReportError(f"{path} is not an llmcheck report (no schema_version or results)")
    major = str(doc["schema_version"]).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ReportError(
            f"{path} has schema version {doc['schema_version']}; this llmcheck reads {SCHEMA_VERSION.split('.')[0]}.x"
        )
    if "digest" not in doc and not allow_unsigned:
        raise ReportError(
            f"{path} has no content digest, so an edit cannot be ruled out; pass --allow-unsigned to accept it"
        )
    try:
        digest = content_digest(doc)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ReportError(f"{path}: content cannot be re-serialised ({type(exc).__name__}: {exc})") from None
    if "digest" in doc and doc["digest"] != digest:
        raise ReportError(f"{path}: content digest does not match; the report was edited after llmcheck wrote it")
    _validate(doc, path)
    return doc


FIELDS = {"id": str, "check": str, "family": str, "model": str, "message": str, "trace": str, "output": str}
MAPPINGS = ("metrics", "params", "variant", "artifacts", "samples", "environment")


def _validate(doc: dict[str, Any], path) -> None:
    """Every field a reader relies on has the type it expects: one line names the first that does not."""
    for key in ("environment", "summary", "producer"):
        if key in doc and not isinstance(doc[key], dict):
            raise ReportError(f"{path}: {key} is {type(doc[key]).__name__}, expected an object")
    for i, r in enumerate(doc["results"]):
        where = f"{path}: result #{i}"
        if not isinstance(r, dict) or r.get("status") not in STATUSES or not isinstance(r.get("id"), str):
            raise ReportError(f"{where} is malformed (needs a string id and a status in {', '.join(STATUSES)})")
        for key, kind in FIELDS.items():
            if key in r and not isinstance(r[key], kind):
                raise ReportError(f"{where} ({r['id']}): {key} is {type(r[key]).__name__}, expected {kind.__name__}")
        for key in MAPPINGS:
            if key in r and not isinstance(r[key], dict):
                raise ReportError(f"{where} ({r['id']}): {key} is {type(r[key]).__name__}, expected an object")
        for name, values in (r.get("samples") or {}).items():
            if not isinstance(values, list) or not all(_number(v) for v in values):
                raise ReportError(f"{where} ({r['id']}): samples[{name!r}] is not a list of numbers")
        if "duration_s" in r and not _number(r["duration_s"]):
            raise ReportError(f"{where} ({r['id']}): duration_s is not a number")


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in (
        "NaN",
        "Infinity",
        "-Infinity",
    )


def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")
