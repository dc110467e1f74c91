"""The pytest session's llmcheck state (kept in ``config.stash``) and each model's settings layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmcheck.isolation.worker import WorkerPool
from llmcheck.registry import Check
from llmcheck.results import Result
from llmcheck.settings import GLOBAL_PARAMS, Layer


@dataclass
class State:
    """Per-session plugin state, kept in ``config.stash``."""

    checks: dict[str, Check]
    layers: list[Layer]  # pyproject and ini settings
    cli_layer: Layer
    pool: WorkerPool
    results: dict[str, Result] = field(default_factory=dict)

    def global_settings(self) -> dict[str, Any]:
        """Global settings for collection; a bad value falls back to its default here and fails items later."""
        values = {k: p.default for k, p in GLOBAL_PARAMS.items()}
        for layer in [*self.layers, self.cli_layer]:
            values.update({k: v for k, v in layer.values.items() if k in GLOBAL_PARAMS and isinstance(v, (int, float))})
        return values


def model_layers(state: State, model: dict[str, Any], path: Path) -> list[Layer]:
    """The settings layers for one model: files, the model's ``checks=``, then the command line."""
    model_layer = Layer(f"@llmcheck.model(checks=...) of {model['name']} in {path.name}", model.get("checks") or {})
    return [*state.layers, model_layer, state.cli_layer]


STATE_KEY = pytest.StashKey[State]()
