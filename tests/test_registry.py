"""Third-party checks arrive through the same entry-point group as the built-ins."""

import pytest
from model_sources import CLEAN

from llmcheck.registry import Check, RegistryError, load_checks

PLUGIN = """
import llmcheck

def measure(ctx, p):
    model = ctx.target.build()
    return {"n_params": sum(q.numel() for q in model.parameters())}

def judge(m, p):
    ok = m["n_params"] <= p.max_params
    return llmcheck.Verdict("passed" if ok else "failed",
                            f"{m['n_params']} parameters {'<=' if ok else '>'} max_params {p.max_params}")

CHECK = llmcheck.Check(name="param_budget", family="size", summary="parameter count within budget",
                       measure=measure, judge=judge,
                       params={"max_params": llmcheck.Param(int, 10_000_000, "largest parameter count")})
"""


@pytest.fixture
def installed_plugin(pytester, monkeypatch):
    """A tiny distribution, 'installed' by putting its code and .dist-info on sys.path."""
    site = pytester.path / "site"
    (site / "param_budget_check-0.1.dist-info").mkdir(parents=True)
    (site / "param_budget_check.py").write_text(PLUGIN)
    info = site / "param_budget_check-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: param-budget-check\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[llmcheck.checks]\nparam_budget = param_budget_check:CHECK\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_the_built_in_checks_load_through_the_entry_point_group():
    checks = load_checks()
    assert {"checkpoint", "eval", "frozen", "gradient", "resume"} <= set(checks)
    assert all(isinstance(c, Check) for c in checks.values())


def test_a_third_party_check_is_collected_configured_and_run_like_a_built_in(run_llmcheck, installed_plugin):
    result = run_llmcheck(CLEAN, "-k", "param_budget", "-v")
    result.stdout.fnmatch_lines(["*model.py::tiny::param_budget PASSED*"])
    assert result.by_check["param_budget"]["metrics"]["n_params"] > 0
    result = run_llmcheck(CLEAN, "-k", "param_budget", "--llmcheck-set", "param_budget.max_params=10")
    record = result.by_check["param_budget"]
    assert record["status"] == "failed" and "parameters > max_params 10" in record["message"]
    assert record["family"] == "size"


def test_a_broken_third_party_check_is_a_usage_error_naming_its_entry_point(run_llmcheck, installed_plugin):
    (installed_plugin / "param_budget_check.py").write_text("CHECK = 42\n")
    result = run_llmcheck(CLEAN)
    result.stderr.fnmatch_lines(
        ["*llmcheck: entry point param_budget = param_budget_check:CHECK*is int, expected an llmcheck.Check*"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_a_check_with_an_unknown_need_is_refused():
    with pytest.raises(RegistryError, match="needs unknown traits"):
        Check("x", "x", "x", measure=None, judge=None, needs=frozenset({"wings"}))
