"""The session's fork server (llmcheck.isolation.forkserver): started while pytest collects when a
check that declares ``preload`` may run, stopped as soon as none of the selected items needs it.

It starts in ``pytest_configure``, before collection, so that its ``import torch`` runs beside the
first worker's (two cores, two start-ups) instead of inside the item that needs it; only the
selection known then is used: the check is on in the files' and the command line's settings, and
a ``-k`` or ``-m`` expression, if given, names it or its family. When collection is done it is
stopped unless a selected, enabled item declares ``preload``. While a timing item runs, a server
still starting is held still (SIGSTOP, then SIGCONT: ``Forkserver.paused``), so that no import runs
beside a measurement and none delays it either; its start-up goes on beside the ordinary items.
Not under pytest-xdist: its workers' items start their processes as before (a server starting in
one worker would run beside another worker's timing item).
"""

from __future__ import annotations

import os

import pytest

from llmcheck.isolation.forkserver import ENV, ENV_PID, Forkserver
from llmcheck.plugins.state import State, model_layers
from llmcheck.settings import SettingsError, resolve


def wanted(config: pytest.Config, state: State) -> tuple[str, ...]:
    """The modules to preload: those of every check that declares ``preload`` and may run in this
    session (on in the files' and command line's settings, named by ``-k``/``-m`` if given); none
    under pytest-xdist or with ``LLMCHECK_NO_FORKSERVER`` set."""
    if (
        hasattr(config, "workerinput")
        or config.getoption("numprocesses", None)
        or config.getoption("dist", "no") != "no"
        or os.environ.get("LLMCHECK_NO_FORKSERVER")
    ):
        return ()
    keyword = (config.getoption("keyword", "") or "").lower()
    marks = (config.getoption("markexpr", "") or "").lower()
    modules: list[str] = []
    for check in state.checks.values():
        if not check.preload or (keyword and check.name not in keyword) or (marks and check.family not in marks):
            continue
        try:
            if not resolve([*state.layers, state.cli_layer], state.checks, check)[2]:
                continue
        except SettingsError:
            continue
        modules += [m for m in check.preload if m not in modules]
    return tuple(modules)


def start(config: pytest.Config, state: State, folder) -> Forkserver | None:
    """The session's fork server, started when a check that preloads may run; None otherwise."""
    modules = wanted(config, state)
    if not modules:
        return None
    server = Forkserver(folder)
    server.start(modules)
    os.environ[ENV] = str(server.path)  # the workers, started after this, inherit them
    os.environ[ENV_PID] = str(server.proc.pid)
    return server


def needed(items: list[pytest.Item], state: State) -> bool:
    """Whether a selected item is of an enabled check that declares ``preload``."""
    from llmcheck.plugins.items import CheckItem

    for item in items:
        if isinstance(item, CheckItem) and item.check.preload:
            try:
                if resolve(model_layers(state, item.model, item.path), state.checks, item.check)[2]:
                    return True
            except SettingsError:
                return True  # the item fails with the message; keep the server, it is cheap to have
    return False


def stop(server: Forkserver | None) -> None:
    if server is not None:
        server.stop()
        if os.environ.get(ENV) == str(server.path):
            del os.environ[ENV]
            os.environ.pop(ENV_PID, None)
