"""pytest collectors and items for model files: file -> model -> one item per check.

The model file is imported in a worker, never in the pytest process (which stays torch-free); the
worker that described the file goes on to run its first model's checks.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from llmcheck.isolation.processes import spread_over_processes
from llmcheck.isolation.worker import WorkerFailure, run_message
from llmcheck.plugins.scheduling import SCHEDULING_KEY
from llmcheck.plugins.state import STATE_KEY, State, model_layers
from llmcheck.registry import Check, variant_id
from llmcheck.reports.plain import printable
from llmcheck.results import FAILING, LlmcheckAdvisory, Result
from llmcheck.settings import SettingsError, resolve, turned_off_by

DECLARES_MODEL = re.compile(r"@\s*(?:llmcheck\s*\.\s*)?model\b")


def declares_models(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "llmcheck" in text and bool(DECLARES_MODEL.search(text))


class CheckFailed(Exception):
    """Raised by an item whose check did not pass; carries the result for ``repr_failure``."""

    def __init__(self, result: Result):
        super().__init__(printable(result.message))
        self.result = result


class ModelFile(pytest.File):
    """A Python file that declares models with ``@llmcheck.model``."""

    def collect(self):
        state: State = self.config.stash[STATE_KEY]
        settings = state.global_settings()
        key = ("describe", str(self.path))
        message = {"op": "describe", "file": str(self.path)}
        try:
            reply, _ = state.pool.request(
                key, message, timeout=settings["startup_timeout"], startup_timeout=settings["startup_timeout"]
            )
        except WorkerFailure as exc:
            raise self.CollectError(
                f"llmcheck could not load {self.path.name}: {exc.message}\n\n{exc.trace}\n{exc.output}"
            ) from None
        if reply["op"] == "error":
            raise self.CollectError(
                f"llmcheck: {reply['message']}" + (f"\n\n{reply['trace']}" if reply.get("trace") else "")
            )
        models = reply["models"]
        state.pool.adopt(key, (str(self.path), models[0]["name"]))
        for info in models:
            yield ModelNode.from_parent(self, name=printable(info["name"]), info=info)


class ModelDir(pytest.Directory):
    """A Hugging Face model folder (``config.json`` and weights): one model, described by a worker
    like a model file (``llmcheck.target.hf`` loads it there, offline)."""

    collect = ModelFile.collect


class ModelNode(pytest.Collector):
    """One declared model; its children are the checks."""

    def __init__(self, *, info: dict[str, Any], **kwargs):
        super().__init__(**kwargs)
        self.info = info

    def collect(self):
        state: State = self.config.stash[STATE_KEY]
        for check in state.checks.values():
            for name, variant in self._variants(state, check):
                item = CheckItem.from_parent(self, name=name, check=check, variant=variant)
                item.add_marker("llmcheck")
                item.add_marker(check.family)
                yield item

    def _variants(self, state: State, check: Check) -> list[tuple[str, dict[str, Any] | None]]:
        """(item name, configuration): one per variant when the check declares them, else one item.
        A settings error or a disabled check gives one item, which reports it when it runs."""
        if check.variants is not None:
            try:
                _, params, enabled = resolve(model_layers(state, self.info, self.path), state.checks, check)
            except SettingsError:
                enabled = False
            if enabled:
                found = {variant_id(v): v for v in check.variants(params)}
                if found:
                    return [(f"{check.name}[{key}]", v) for key, v in found.items()]
        return [(check.name, None)]


class CheckItem(pytest.Item):
    """One check on one model, run in that model's worker."""

    def __init__(self, *, check: Check, variant: dict[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.check = check
        self.variant = variant
        self.model = self.parent.info
        self.params: dict[str, Any] = {}

    def runtest(self) -> None:
        state: State = self.config.stash[STATE_KEY]
        started = time.perf_counter()
        from llmcheck.plugins import ab_items  # A/B mode (--llmcheck-ab-base), in llmcheck.plugins.ab_items

        result = ab_items.run(self, state) if ab_items.applies(self) else self._run(state)
        if not result.duration_s:
            result.duration_s = time.perf_counter() - started
        state.results[self.nodeid] = result
        if result.output.strip():
            self.add_report_section("call", "worker output", result.output)
        if result.advisory:  # what-ifs the model file did not opt into: a warning, never a failure
            self.warn(LlmcheckAdvisory(f"{self.nodeid}: advisory, not gated: " + "; ".join(result.advisory)))
        if result.status == "skipped":  # reported at the model's line, not at this file's
            raise pytest.skip.Exception(result.message, _use_item_location=True)
        if result.status in FAILING:
            raise CheckFailed(result)

    def _run(self, state: State) -> Result:
        layers = model_layers(state, self.model, self.path)
        try:
            glob, params, enabled = resolve(layers, state.checks, self.check)
        except SettingsError as exc:
            return Result("error", f"llmcheck settings: {exc}")
        self.params = dict(params)
        if not enabled:
            name, source = self.check.name, turned_off_by(layers, state.checks, self.check.name)
            return Result("skipped", f"{name} is turned off by {source}; --llmcheck-set {name}=true turns it on")
        message = run_message(str(self.path), self.model["name"], self.check.name, params, glob, self.variant)
        slot = self.stash.get(SCHEDULING_KEY, {})
        message["threads"] = slot.get("share")
        try:
            reply, output = state.pool.request(
                (str(self.path), self.model["name"]),
                message,
                timeout=params["timeout"],
                startup_timeout=glob["startup_timeout"],
            )
        except WorkerFailure as exc:
            return Result(exc.status, exc.message, exc.metrics, trace=exc.trace, output=exc.output)
        result = Result.from_json(reply["result"])
        result.output = output
        if slot and reply.get("torch_threads"):
            slot["torch_threads"] = reply["torch_threads"]  # what the check ran with
        return spread_over_processes(
            self.check, message, params, glob, result, state.pool, (str(self.path), self.model["name"])
        )

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckFailed):
            result = excinfo.value.result
            text = f"[{result.status}] {result.message}"
            return printable(text + (f"\n\n{result.trace.rstrip()}" if result.trace else ""))
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, max(self.model.get("line", 1) - 1, 0), f"{self.model['name']}::{self.name}"
