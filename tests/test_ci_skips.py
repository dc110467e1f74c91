"""Under CI=true a test skipped for a missing package fails (tests/ci_skips.py, loaded by conftest):
CI installs what the tests need, so only hardware skips (CUDA) may remain there."""

from __future__ import annotations

import pytest

SKIPS = """
import pytest


def test_needs_a_package_that_is_not_installed():
    pytest.importorskip("no_such_package_xyz")


@pytest.mark.skipif(True, reason="needs transformers (pip install 'llmcheck[hf]')")
def test_marked_for_a_missing_package():
    pass


@pytest.mark.skipif(True, reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_needs_cuda():
    pass


@pytest.mark.xfail(reason="No module named anything: an expected failure is not a skip")
def test_expected_to_fail():
    assert False
"""

MODULE_LEVEL = """
import pytest

pytest.importorskip("no_such_package_xyz")


def test_never_collected():
    pass
"""


@pytest.fixture
def run(pytester, monkeypatch):
    def run(source: str, ci: bool):
        if ci:
            monkeypatch.setenv("CI", "true")
        else:
            monkeypatch.delenv("CI", raising=False)
        pytester.makepyfile(test_skips=source)
        # ci_skips is already imported (by conftest), so pytest cannot rewrite its asserts: it has none
        return pytester.runpytest(
            "-p", "ci_skips", "-p", "no:cacheprovider", "-rs", "-W", "ignore::pytest.PytestAssertRewriteWarning"
        )

    return run


def test_under_ci_a_skip_for_a_missing_package_fails_and_a_cuda_skip_stays_a_skip(run):
    result = run(SKIPS, ci=True)
    # importorskip in the test body fails the call; a skipif mark fails the setup (an error)
    result.assert_outcomes(failed=1, errors=1, skipped=1, xfailed=1)
    for line in (
        "CI=true: skipped for a missing package, which .ci/run must install: could not import 'no_such_package_xyz'*",
        "CI=true: skipped for a missing package, which .ci/run must install: needs transformers (pip install*",
        "SKIPPED*needs a CUDA device*",
    ):
        result.stdout.fnmatch_lines([line])


def test_outside_ci_the_same_tests_skip(run):
    run(SKIPS, ci=False).assert_outcomes(skipped=3, xfailed=1)


def test_under_ci_a_module_skipped_at_import_for_a_missing_package_is_a_collection_error(run):
    result = run(MODULE_LEVEL, ci=True)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CI=true: skipped for a missing package*no_such_package_xyz*"])
    assert result.ret != 0
    run(MODULE_LEVEL, ci=False).assert_outcomes(skipped=1)
