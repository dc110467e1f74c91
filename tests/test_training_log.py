"""The training check's log mode and its judgements: a stored CSV or JSON-lines log is read into
curves, and each judgement fires on a log built to trip it, with its numbers in the message.
The judgements are pure functions, the same ones the live run uses."""

from __future__ import annotations

import json
import math

import pytest
from model_sources import CLEAN

from llmcheck.checks.training.check import CHECK, _stop_reason, judge
from llmcheck.checks.training.log import LogError, read_log
from llmcheck.settings import Params


def params(**override) -> Params:
    return Params({**{k: v.default for k, v in CHECK.params.items()}, **override})


def healthy(steps: int = 100) -> list[dict]:
    """A run that learns: loss 4 -> 1, 10 warm-up steps to lr 1e-3 then cosine, val every 20 steps."""
    rows = []
    for s in range(steps):
        lr = 1e-3 * (s + 1) / 10 if s < 10 else 1e-3 * (0.55 + 0.45 * math.cos(math.pi * (s - 10) / steps))
        row = {"step": s, "loss": 1 + 3 * math.exp(-s / 30) + 0.02 * math.sin(7 * s), "lr": lr}
        if s % 20 == 0:
            row["val_loss"] = 1.1 + 3 * math.exp(-s / 30)
        rows.append(row)
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def verdict(path, **override):
    metrics = {
        "mode": "log",
        "source": f"log {path}",
        **read_log(path),
        "peak_lr": override.pop("peak_lr", None),
        "peak_source": "training.peak_lr",
        "stopped": None,
    }
    return judge(metrics, params(**override))


def test_a_healthy_log_passes_every_judgement(tmp_path):
    v = verdict(write_jsonl(tmp_path / "run.jsonl", healthy()), peak_lr=1e-3, warmup_steps=10)
    assert v.status == "passed", v.message
    assert "100 steps" in v.message and "0 loss spike(s)" in v.message and "val_loss 4.1 -> " in v.message
    assert "lr 0.0001 -> peak 0.001 (step 9)" in v.message


def test_a_loss_spike_fails_with_the_step_and_the_running_median(tmp_path):
    rows = healthy()
    rows[37]["loss"] = 3 * rows[37]["loss"]
    v = verdict(write_jsonl(tmp_path / "run.jsonl", rows))
    assert v.status == "failed"
    assert (
        "1 loss spike(s) > 2x the median of the previous 10 steps (limit 0): step 37: 5.681 = 2.8x the median 2.04"
        in v.message
    )


def test_validation_rising_while_training_falls_fails_as_overfitting(tmp_path):
    rows = healthy()
    for r, val in zip(rows[::20], (4.0, 2.0, 1.6, 1.9, 2.2)):
        r["val_loss"] = val
    v = verdict(write_jsonl(tmp_path / "run.jsonl", rows))
    assert v.status == "failed"
    assert (
        "over-fitting: val_loss rose 1.6 (step 40) -> 2.2 (step 80), +38% (limit 10%), while training loss fell"
        in v.message
    )


def test_a_flat_loss_fails_as_nothing_learned(tmp_path):
    rows = [{"step": s, "loss": 4.16 + 0.01 * math.sin(s), "lr": 1e-3} for s in range(60)]
    v = verdict(write_jsonl(tmp_path / "run.jsonl", rows))
    assert v.status == "failed"
    assert "nothing learned: loss 4.162 -> 4.162 (means of the first and last 10 steps)" in v.message
    assert "0.0% drop, need >= 5%" in v.message


def test_a_learning_rate_of_zero_mid_run_fails(tmp_path):
    rows = healthy()
    for r in rows[50:]:
        r["lr"] = 0.0
    v = verdict(write_jsonl(tmp_path / "run.jsonl", rows))
    assert v.status == "failed"
    assert "learning rate is 0 at step 50 (49 step(s) in all) where training is expected" in v.message


def test_a_warmup_short_of_the_declared_peak_fails(tmp_path):
    rows = healthy()
    for r in rows:
        r["lr"] /= 2
    v = verdict(write_jsonl(tmp_path / "run.jsonl", rows), peak_lr=1e-3)
    assert v.status == "failed"
    assert (
        "the learning rate tops out at 0.0005 (step 9) = 50.0% of the declared peak 0.001 "
        "(from training.peak_lr) (need >= 99%)"
    ) in v.message


def test_a_nan_loss_fails_as_divergence_at_its_step(tmp_path):
    rows = healthy()
    rows[60]["loss"] = float("nan")
    v = verdict(write_jsonl(tmp_path / "run.jsonl", rows))
    assert v.status == "failed" and "diverged: loss is nan at step 60 (the first non-finite value)" in v.message


def test_the_live_run_stops_at_divergence_or_at_its_time_budget():
    assert _stop_reason([4.0, 3.9], params(time_budget=5.0), elapsed=6.0) == "time budget of 5 s"
    assert _stop_reason([4.0, 3.9], params(time_budget=0.0), elapsed=600.0) is None
    assert _stop_reason([4.0, 17.0], params(), elapsed=0.1) == "loss exploded at step 1"
    assert _stop_reason([4.0, float("inf")], params(), elapsed=0.1) == "non-finite loss at step 1"


def test_a_csv_log_with_separate_eval_rows_and_common_column_names_is_read(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "global_step,train_loss,learning_rate,eval_loss\n0,4.0,0.001,\n1,3.0,0.001,\n2,2.5,0.001,\n2,,,2.7\n"
    )
    curves = read_log(path)
    assert curves["steps"] == [0, 1, 2] and curves["loss"] == [4.0, 3.0, 2.5]
    assert curves["lr"] == [0.001] * 3 and curves["val_steps"] == [2] and curves["val_loss"] == [2.7]


def test_an_unreadable_log_names_the_file_and_line(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"step": 0, "loss": 4.0}\nnot json\n')
    with pytest.raises(LogError, match=r"run.jsonl line 2: not JSON"):
        read_log(path)
    with pytest.raises(LogError, match="does not exist"):
        read_log(tmp_path / "missing.jsonl")
    (tmp_path / "nolos.csv").write_text("step,accuracy\n0,0.5\n")
    with pytest.raises(LogError, match=r"no training loss: .*columns seen: accuracy, step"):
        read_log(tmp_path / "nolos.csv")


def test_a_ci_gate_on_last_nights_log_fails_through_pytest(run_llmcheck, pytester, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = healthy()
    rows[37]["loss"] *= 3
    (pytester.path / "runs").mkdir()
    write_jsonl(pytester.path / "runs" / "last.jsonl", rows)
    result = run_llmcheck(CLEAN, "-k", "training", "--llmcheck-set", "training.log=runs/last.jsonl")
    found = result.by_check["training"]
    assert found["status"] == "failed", found["message"]
    assert found["message"].startswith("log runs/last.jsonl: 100 steps: 1 loss spike(s)")
    assert len(found["samples"]["loss"]) == 100 and len(found["samples"]["val_loss"]) == 5
    result.assert_outcomes(failed=1)
