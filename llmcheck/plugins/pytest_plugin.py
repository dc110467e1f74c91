"""The pytest plugin (``pytest11`` entry point). Thin: options, collection hooks, report hooks.

Importing this module must stay cheap: no torch here or in anything it imports at module level.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

from llmcheck.isolation.worker import WorkerPool
from llmcheck.plugins import ab_items, benchmark_bridge, prewarm, progress
from llmcheck.plugins.items import CheckItem, ModelDir, ModelFile, declares_models
from llmcheck.plugins.report_writer import RECORD_ATTR, ReportWriter
from llmcheck.plugins.scheduling import SCHEDULING_KEY, Slots
from llmcheck.plugins.state import STATE_KEY, State
from llmcheck.registry import RegistryError, load_checks
from llmcheck.settings import PROFILES, Layer, SettingsError, assignments, profile_layer, pyproject_layer
from llmcheck.target.hf import is_model_dir

WRITER_KEY = pytest.StashKey[ReportWriter]()
TMP_KEY = pytest.StashKey[Path]()
PROGRESS_KEY = pytest.StashKey[float]()
SLOTS_KEY = pytest.StashKey[Slots]()
FORKSERVER_KEY = pytest.StashKey[object]()  # the session's fork server (plugins/prewarm.py), or None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmcheck", "llmcheck: checks for PyTorch language models")
    group.addoption(
        "--llmcheck", action="store_true", help="collect model files (@llmcheck.model) and run their checks"
    )
    group.addoption("--llmcheck-json", metavar="PATH", help="JSON report path (default llmcheck-report.json)")
    group.addoption("--llmcheck-html", metavar="PATH", help="also write a self-contained HTML report to PATH")
    group.addoption(
        "--llmcheck-set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a setting for this run: timeout=60, gradient.overfit_steps=50 (repeatable)",
    )
    group.addoption(
        "--llmcheck-timeout", metavar="SECONDS", help="per-check timeout (same as --llmcheck-set timeout=...)"
    )
    group.addoption("--llmcheck-seed", metavar="N", help="seed for every factory call (same as --llmcheck-set seed=N)")
    group.addoption(
        "--llmcheck-device", metavar="DEVICE", help="cpu, cuda or cuda:N (same as --llmcheck-set device=...)"
    )
    group.addoption(
        "--llmcheck-profile",
        choices=PROFILES,
        help="quick (pull requests: correctness and cheap fault checks, small budgets), full (nightly: "
        "everything, larger budgets) or default; pyproject, ini, model and --llmcheck-set settings override it",
    )
    ab_items.add_options(group)
    parser.addini("llmcheck_json", "JSON report path", default="llmcheck-report.json")
    parser.addini("llmcheck_html", "HTML report path (empty: no HTML report)", default="")
    parser.addini("llmcheck_progress", "seconds a check runs before progress lines name it (0: never)", default="10")
    parser.addini(
        "llmcheck_settings", "settings as KEY=VALUE lines (timeout=60, gradient.overfit_steps=50)", type="linelist"
    )


def _cli_layer(config: pytest.Config) -> Layer:
    lines = list(config.getoption("llmcheck_set"))
    for key in ("timeout", "seed", "device", "profile"):
        value = config.getoption(f"llmcheck_{key}")
        if value is not None:
            lines.append(f"{key}={value}")
    return assignments(lines, "the command line")


def _file_layers(config: pytest.Config) -> list[Layer]:
    layers = []
    for candidate in {
        config.rootpath / "pyproject.toml",
        *(p for p in [config.inipath] if p and p.name == "pyproject.toml"),
    }:
        layer = pyproject_layer(candidate)
        if layer:
            layers.append(layer)
    lines = config.getini("llmcheck_settings")
    if lines:
        layers.append(assignments(lines, f"llmcheck_settings in {config.inipath or 'the ini file'}"))
    return layers


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmcheck: an llmcheck check item")
    if not config.getoption("llmcheck"):
        return
    try:
        checks = load_checks()
        layers, cli = _file_layers(config), _cli_layer(config)
    except (RegistryError, SettingsError) as exc:
        raise pytest.UsageError(f"llmcheck: {exc}") from None
    for family in sorted({c.family for c in checks.values()}):
        config.addinivalue_line("markers", f"{family}: llmcheck checks of the {family} family")
    every = progress.interval(config)  # before anything needs cleaning up: a bad value is a UsageError
    tmp = Path(tempfile.mkdtemp(prefix="llmcheck-"))
    config.stash[TMP_KEY] = tmp
    config.stash[STATE_KEY] = State(checks, layers, cli, WorkerPool(tmp, cwd=str(config.invocation_params.dir)))
    config.stash[SLOTS_KEY] = Slots(config)
    config.stash[FORKSERVER_KEY] = prewarm.start(config, config.stash[STATE_KEY], tmp)
    if not hasattr(config, "workerinput"):  # xdist workers send records to the controller instead
        if config.pluginmanager.hasplugin("xdist"):
            from llmcheck.plugins.xdist_hooks import XdistHooks

            (tmp / "slots").mkdir()
            config.pluginmanager.register(XdistHooks(checks, tmp / "slots"), "llmcheck-xdist")
        path = config.getoption("llmcheck_json") or config.getini("llmcheck_json")
        html = config.getoption("llmcheck_html") or config.getini("llmcheck_html") or None
        writer = config.stash[WRITER_KEY] = ReportWriter(config, path, html)
        config.pluginmanager.register(writer, "llmcheck-report-writer")
        benchmark_bridge.register(config)  # measurements also become pytest-benchmark entries
        writer.install_sigterm()
        config.stash[PROGRESS_KEY] = every


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        prewarm.stop(config.stash.get(FORKSERVER_KEY, None))
        state.pool.close()
        shutil.rmtree(config.stash[TMP_KEY], ignore_errors=True)
    writer = config.stash.get(WRITER_KEY, None)
    if writer is not None:
        writer.restore_sigterm()
        config.pluginmanager.unregister(writer)
        del config.stash[WRITER_KEY]


def _claims(path: Path, parent: pytest.Collector) -> bool:
    if not parent.config.getoption("llmcheck") or path.suffix != ".py" or path.name == "conftest.py":
        return False
    return declares_models(path) or parent.session.isinitpath(path)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector):
    # pytest's python plugin imports every file named on the command line as a test module; for
    # model files we answer instead, so model.py is imported once, in the worker, not in pytest.
    if _claims(module_path, parent) and (declares_models(module_path) or not _is_test_module(module_path, parent)):
        return ModelFile.from_parent(parent, path=module_path)
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    # Files the python plugin does not look at (not test_*.py, not named on the command line).
    if (
        _claims(file_path, parent)
        and not parent.session.isinitpath(file_path)
        and not _is_test_module(file_path, parent)
    ):
        return ModelFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector):
    # A Hugging Face model folder is one model (model_dir::<architecture>::<check>), not a tree to walk.
    if parent.config.getoption("llmcheck") and is_model_dir(path):
        # pytest names a folder by its path from the rootdir: "." when the folder is the rootdir
        # (the only argument, with no ini file), empty outside it. Use the folder's own name then.
        root = parent.config.rootpath
        below = path != root and path.is_relative_to(root)
        return ModelDir.from_parent(parent, path=path, nodeid=None if below else path.name)
    return None


def _is_test_module(path: Path, parent: pytest.Collector) -> bool:
    """Whether pytest's ``python_files`` patterns match ``path``: a pattern without a separator
    matches the file name, one with a separator the path's end (as pytest matches them)."""
    import fnmatch

    for pattern in parent.config.getini("python_files"):
        if "/" not in pattern and fnmatch.fnmatch(path.name, pattern):
            return True
        if "/" in pattern and fnmatch.fnmatch(str(path), pattern if pattern.startswith("/") else "*/" + pattern):
            return True
    return False


def pytest_collection_finish(session: pytest.Session) -> None:
    server = session.config.stash.get(FORKSERVER_KEY, None)
    if server is not None and not prewarm.needed(session.items, session.config.stash[STATE_KEY]):
        prewarm.stop(server)
        session.config.stash[FORKSERVER_KEY] = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if not isinstance(item, CheckItem):
        return (yield)
    server = item.config.stash.get(FORKSERVER_KEY, None)
    quiet = server.paused() if server is not None and item.check.timing else contextlib.nullcontext()
    every = item.config.stash.get(PROGRESS_KEY, 0)
    with quiet, item.config.stash[SLOTS_KEY].hold(exclusive=item.check.timing) as slot:
        item.stash[SCHEDULING_KEY] = slot
        ticker = progress.for_item(item, item.config.stash[STATE_KEY].pool, every)
        try:
            return (yield)
        finally:
            if ticker is not None:
                ticker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if isinstance(item, CheckItem) and (report.when == "call" or report.failed or report.skipped):
        state = item.config.stash[STATE_KEY]
        result = state.results.pop(item.nodeid, None)
        setattr(report, RECORD_ATTR, record(item, report, result, state.pool.env))
    return report


def record(item: CheckItem, report: pytest.TestReport, result, env) -> dict:
    """The report's view of one item: what ran, with which parameters, and how it ended."""
    from llmcheck.results import Result

    if result is None:  # ended before the check ran: a pytest skip mark, a setup error, -x
        status = "skipped" if report.skipped else ("passed" if report.passed else "error")
        result = Result(status, str(report.longrepr)[-2000:] if report.longrepr else "")
    data = result.to_json()
    data.update(
        id=item.nodeid,
        file=str(item.path),
        model=item.model["name"],
        check=item.check.name,
        family=item.check.family,
        params=item.params,
    )
    scheduling = item.stash.get(SCHEDULING_KEY, None)
    if scheduling:
        data["scheduling"] = scheduling
    if env:
        data["environment"] = env
    return data


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return None
    glob = state.global_settings()
    try:
        profile = profile_layer([*state.layers, state.cli_layer], state.checks).source
    except SettingsError as exc:  # its items fail with the message
        profile = f"no profile ({exc})"
    return [
        f"llmcheck: {len(state.checks)} checks ({', '.join(state.checks)}); seed={glob['seed']}, "
        f"device={glob['device']}, timeout={glob['timeout']:g}s per check; {profile}"
    ]
