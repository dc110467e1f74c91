"""Reads a stored training log (CSV or JSON lines) into the curves the `training` check judges.

A row may carry any of step, loss, lr and val_loss (common aliases accepted); rows with a loss
make the training curve, rows with a val_loss the validation curve, rows with an lr the
learning-rate curve, so loggers that write evaluation rows apart from training rows work too.
Pure Python: no torch, so the same reader serves a log from any framework.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

ALIASES = {
    "step": ("step", "global_step", "iter", "iteration", "_step"),
    "loss": ("loss", "train_loss", "training_loss", "train/loss"),
    "lr": ("lr", "learning_rate", "train/learning_rate"),
    "val_loss": ("val_loss", "eval_loss", "validation_loss", "valid_loss", "eval/loss"),
}


class LogError(ValueError):
    """The log file cannot be read as a training log; the message names the file and line."""


def read_log(path: str | Path) -> dict:
    """Curves from ``path``: steps, loss, lr_steps, lr, val_steps, val_loss (lr lists empty without lr)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise LogError(
            f"training log {path} does not exist (relative paths are taken from the directory pytest runs in)"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    first = text.lstrip()[:1]
    json_lines = path.suffix.lower() in (".jsonl", ".json", ".ndjson") or (
        path.suffix.lower() != ".csv" and first == "{"
    )
    rows = list(_json_rows(text, path) if json_lines else _csv_rows(text, path))
    return _curves(rows, path)


def _json_rows(text: str, path: Path):
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogError(f"{path} line {number}: not JSON ({exc.msg}); expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise LogError(
                f"{path} line {number}: {type(row).__name__}, expected a JSON object such as "
                f'{{"step": 10, "loss": 2.3, "lr": 0.001}}'
            )
        yield number, row


def _csv_rows(text: str, path: Path):
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise LogError(f"{path} is empty; expected a CSV header such as step,loss,lr,val_loss")
    for row in reader:
        yield reader.line_num, {k.strip(): v for k, v in row.items() if k is not None}


def _value(row: dict, field: str, path: Path, number: int) -> float | None:
    for key in ALIASES[field]:
        raw = row.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise LogError(f"{path} line {number}: {key} = {raw!r} is not a number") from None
    return None


def _curves(rows: list, path: Path) -> dict:
    out = {"steps": [], "loss": [], "lr_steps": [], "lr": [], "val_steps": [], "val_loss": []}
    for index, (number, row) in enumerate(rows):
        step = _value(row, "step", path, number)
        step = index if step is None or not math.isfinite(step) else int(step)
        for field, steps_key in (("loss", "steps"), ("lr", "lr_steps"), ("val_loss", "val_steps")):
            value = _value(row, field, path, number)
            if value is not None:
                out[steps_key].append(step)
                out[field].append(value)
    if not out["loss"]:
        seen = sorted({k for _, row in rows for k in row})
        raise LogError(
            f"{path} has no training loss: no row carries any of {', '.join(ALIASES['loss'])} "
            f"(columns seen: {', '.join(seen) or 'none'})"
        )
    return out
