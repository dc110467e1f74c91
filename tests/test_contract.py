"""The model-file contract and the pytest habits users expect, driven through ``pytest --llmcheck``."""

import json
from pathlib import Path

from model_sources import CLEAN, variant

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"


def test_the_example_model_passes_every_check(pytester):
    result = pytester.runpytest(
        "--llmcheck",
        str(EXAMPLE),
        "-p",
        "no:cacheprovider",
        "-rs",
        "--llmcheck-json",
        "r.json",
        "--llmcheck-set",
        "latency.processes=1",
    )  # spreading: test_performance_processes.py
    assert result.ret == 0
    records = json.loads((pytester.path / "r.json").read_text())["results"]
    assert {r["status"] for r in records} <= {"passed", "skipped"}
    passed = {r["check"] for r in records if r["status"] == "passed"}
    assert {"checkpoint", "eval", "frozen", "gradient", "resume"} <= passed
    frozen = {r["model"]: r for r in records if r["check"] == "frozen"}
    assert frozen["tiny_gpt"]["status"] == "skipped" and "nothing is frozen" in frozen["tiny_gpt"]["message"]
    assert frozen["tiny_gpt_finetune"]["status"] == "passed"
    assert all(r["message"] for r in records if r["status"] == "skipped")  # every skip says why
    # The same run proves what tests of single checks on the example would otherwise repeat, each a
    # session of its own: the equivalence checks' verdicts and reasons (issue 18), and DDP on both
    # the example and its fine-tuning set-up (tests/test_distributed.py tests the failures).
    found = {(r["model"], r["id"].rsplit("::", 1)[-1]): r for r in records}
    five = ("compile[default]", "compile[reduce-overhead]", "export", "attention", "checkpointing", "static-cache")
    assert {item: found["tiny_gpt", item]["status"] for item in five} == {
        "compile[default]": "passed",
        "compile[reduce-overhead]": "skipped",
        "export": "passed",
        "attention": "passed",
        "checkpointing": "skipped",
        "static-cache": "skipped",
    }
    compiled = found["tiny_gpt", "compile[default]"]["message"]
    assert "backend aot_eager" in compiled and "0 graph break(s)" in compiled
    assert "1 recompilation(s) across lengths [3, 12, 20, 29, 38, 47, 55, 64] (budget 1)" in compiled
    assert "needs a CUDA device" in found["tiny_gpt", "compile[reduce-overhead]"]["message"]
    assert "dynamic batch and seq <= 64" in found["tiny_gpt", "export"]["message"]
    attention = found["tiny_gpt", "attention"]["message"]
    assert "sdpa[math], sdpa[flash] agree" in attention and "float16 skipped" in attention
    assert "no gradient checkpointing switch" in found["tiny_gpt", "checkpointing"]["message"]
    assert "no Hugging Face generate()" in found["tiny_gpt", "static-cache"]["message"]
    for model in ("tiny_gpt", "tiny_gpt_finetune"):
        ddp = found[model, "distributed"]
        assert ddp["status"] == "passed" and "DDP on 2 gloo ranks" in ddp["message"], ddp["message"]


def test_item_ids_read_file_model_check_and_k_selects(run_llmcheck):
    result = run_llmcheck(CLEAN, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["model.py::tiny::checkpoint", "model.py::tiny::eval", "model.py::tiny::gradient"])
    result = run_llmcheck(CLEAN, "-k", "gradient", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*model.py::tiny::gradient PASSED*"])


def test_a_file_without_models_shows_a_five_line_example(run_llmcheck):
    result = run_llmcheck("import torch\n\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    result.stdout.fnmatch_lines(
        ["*declares no model*", "*@llmcheck.model(causal=True, vocab_size=256, max_seq_len=128)*", "*def my_model():*"]
    )
    assert result.ret != 0


def test_a_factory_that_raises_errors_its_items_with_its_traceback_and_other_models_still_run(run_llmcheck):
    source = (
        CLEAN
        + """
@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def broken():
    raise RuntimeError("weights file missing")
"""
    )
    result = run_llmcheck(source, "-k", "eval or gradient")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        ["*?error? model factory broken() raised RuntimeError: weights file missing*", '*model.py", line *, in broken*']
    )
    broken = [r for r in result.report["results"] if r["model"] == "broken"]
    assert {r["status"] for r in broken} == {"error"}
    assert "llmcheck/" not in broken[0]["trace"]  # the user's frames, not ours


def test_inputs_of_the_wrong_type_name_what_was_returned(run_llmcheck):
    source = (
        CLEAN
        + """
@llmcheck.inputs
def batch(batch_size, seq_len):
    return [[1, 2, 3]] * batch_size
"""
    )
    result = run_llmcheck(source, "-k", "eval")
    result.stdout.fnmatch_lines(["*@llmcheck.inputs batch(2, 16) returned list; expected a Mapping of tensors*"])
    assert result.by_check["eval"]["status"] == "error"


def test_inputs_with_the_wrong_batch_dimension_name_the_tensor_and_shape(run_llmcheck):
    source = (
        CLEAN
        + """
@llmcheck.inputs
def batch(batch_size, seq_len):
    return {"idx": torch.zeros(seq_len, batch_size, dtype=torch.long)}
"""
    )
    result = run_llmcheck(source, "-k", "eval")
    result.stdout.fnmatch_lines(["*returned idx of shape [[]16, 2]; its first dimension must be the batch size 2*"])


def test_a_model_file_named_like_a_test_module_is_imported_once_in_the_worker_only(pytester):
    (pytester.path / "imports.log").write_text("")
    source = "import os\nopen(os.path.join(os.path.dirname(__file__), 'imports.log'), 'a').write('x')\n" + CLEAN
    path = pytester.path / "test_model.py"
    path.write_text(source)
    result = pytester.runpytest("--llmcheck", str(path), "-p", "no:cacheprovider", "-k", "eval")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "imports.log").read_text() == "x"  # once, in the worker; never by pytest itself


def test_the_pytest_process_never_imports_torch(pytester):
    pytester.makeconftest("""
import sys
def pytest_sessionfinish(session):
    open("torch-in-parent.txt", "w").write(str("torch" in sys.modules))
""")
    (pytester.path / "model.py").write_text(CLEAN)
    result = pytester.runpytest_subprocess("--llmcheck", "model.py", "-p", "no:cacheprovider", "-k", "eval")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "torch-in-parent.txt").read_text() == "False"


def test_junit_xml_and_exitfirst_keep_their_pytest_meaning(run_llmcheck):
    source = variant(
        "self.head = nn.Linear(D, V, bias=False)",
        "self.head = nn.Linear(D, V, bias=False)\n        self.unused = nn.Linear(D, D)",
    )
    result = run_llmcheck(
        source,
        "-x",
        "--junitxml",
        "out.xml",
        "-k",
        "(checkpoint and not checkpointing) or eval or frozen or gradient or resume",
    )
    # checkpoint and eval pass, frozen is skipped (nothing frozen), gradient fails and -x stops before resume
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    assert "resume" not in result.by_check
    xml = Path("out.xml").read_text()
    assert 'name="gradient"' in xml and "parameter unused.weight received no gradient" in xml


def test_last_failed_reruns_only_the_failing_check(pytester):
    source = variant(
        "self.head = nn.Linear(D, V, bias=False)",
        "self.head = nn.Linear(D, V, bias=False)\n        self.unused = nn.Linear(D, D)",
    )
    (pytester.path / "model.py").write_text(source)
    first = pytester.runpytest("--llmcheck", "model.py", "-k", "eval or gradient")
    first.assert_outcomes(passed=1, failed=1)
    again = pytester.runpytest("--llmcheck", "model.py", "--lf")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*model.py::tiny::gradient*"])


def test_the_json_report_is_strict_json_with_environment_and_records(run_llmcheck):
    source = variant("return self.head(x)", "return self.head(x) * float('nan')")
    result = run_llmcheck(source, "-k", "gradient")
    text = Path("report.json").read_text()
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no NaN literals
    doc = result.report
    assert doc["schema_version"].startswith("1.")
    assert doc["producer"]["name"] == "llmcheck"
    for key in ("python", "torch", "device", "cpu", "git_commit"):
        assert key in doc["environment"]
    record = result.by_check["gradient"]
    assert record["id"] == "model.py::tiny::gradient"
    assert record["status"] == "failed" and record["metrics"]["loss"] == "NaN"
    assert record["params"]["overfit_steps"] == 50 and record["duration_s"] > 0
    assert "loss at init is nan" in record["message"]
    result.stdout.fnmatch_lines(["*llmcheck JSON report: report.json*"])


def test_a_folder_of_model_files_collects_only_files_that_declare_models(pytester):
    models = pytester.path / "models"
    models.mkdir()
    (models / "first.py").write_text(CLEAN)
    (models / "second.py").write_text(CLEAN.replace("def tiny():", "def other():"))
    (models / "layers.py").write_text("import llmcheck\nimport torch\n\nWIDTH = 4\n")  # a helper, no model
    result = pytester.runpytest("--llmcheck", "models", "-p", "no:cacheprovider", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["models/first.py::tiny::checkpoint", "models/second.py::other::checkpoint"])
    assert "layers.py" not in result.stdout.str()


def test_the_model_file_reads_relative_paths_from_the_directory_pytest_was_started_in(pytester):
    (pytester.path / "vocab.txt").write_text("64")
    source = CLEAN.replace("V, D, T = 64, 32, 32", "V, D, T = int(open('vocab.txt').read()), 32, 32")
    sub = pytester.path / "models"
    sub.mkdir()
    (sub / "model.py").write_text(source)
    result = pytester.runpytest("--llmcheck", "models/model.py", "-p", "no:cacheprovider", "-k", "eval")
    result.assert_outcomes(passed=1)
