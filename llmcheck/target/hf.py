"""Hugging Face model folders as targets: a directory holding ``config.json`` and weights is one model.

``pytest --llmcheck path/to/model_dir`` collects such a folder (see the plugin's
``pytest_collect_directory``); in the worker it is loaded fully offline (``local_files_only=True``),
from safetensors when the folder has them and otherwise from ``.bin`` files through
``weights_only=True``, never plain pickle (docs/design.md §5). A tokenizer in the folder, if present,
turns a fixed English text into the check batches, so checks see real token statistics.

Importing this module is cheap (the pytest process uses `is_model_dir`); transformers is imported
inside functions, in the worker.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path

from llmcheck.declare import HookDecl, ModelDecl

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
# Real text for tokenizer-made batches: ordinary English prose, long enough for a few windows.
TEXT = (
    "The river ran high that spring, and the old ferryman said he had never seen the water so brown. "
    "Every morning the children gathered on the bank to count the branches that floated past, and every "
    "evening their mothers called them home before the light went. In the town, the baker raised the price "
    "of bread by a penny, the school closed for a week because the roof leaked, and the mayor promised a new "
    "bridge that nobody believed would be built. Still, the market opened on Saturday as it always had: "
    "farmers brought eggs, cheese and early onions, a man sold knives from a cart, and a woman with a green "
    "umbrella told fortunes for anyone who would listen. By June the river had fallen back between its banks, "
    "the roof was mended, and the talk had turned to the harvest, the weather and the price of wool."
)


def has_weights(path: Path) -> bool:
    return any(next(path.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS)


def is_model_dir(path: Path) -> bool:
    """A folder with ``config.json`` and weight files: what transformers' ``from_pretrained`` loads."""
    try:
        return path.is_dir() and (path / "config.json").is_file() and has_weights(path)
    except OSError:
        return False


def model_name(path: Path) -> str:
    """The model's name in item ids: the config's first architecture, else its model_type, else the folder."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    archs = config.get("architectures") or []
    name = archs[0] if archs and isinstance(archs[0], str) else config.get("model_type") or path.name
    return re.sub(r"[^\w.-]", "_", str(name)) or "model"


def folder_declarations(path: Path) -> tuple[list[ModelDecl], dict[str, dict[str, HookDecl]]]:
    """The folder as one model declaration (traits come from its config when loaded), with a
    tokenizer-backed ``inputs`` hook when the folder has a tokenizer."""
    from llmcheck.target.contract import ContractError

    path = path.resolve()
    if not is_model_dir(path):
        raise ContractError(
            f"{path} is not a Hugging Face model folder: it needs config.json and weights "
            f"({', '.join(WEIGHT_PATTERNS)})"
        )
    name = model_name(path)
    factory = functools.partial(load_model, str(path))
    factory.__name__ = name  # shown in error messages as "model factory NAME()"
    hooks = {}
    if any((path / f).is_file() for f in TOKENIZER_FILES):
        text_batch = functools.partial(tokenizer_batch, str(path))
        text_batch.__name__ = "tokenizer_batch"
        hooks["inputs"] = HookDecl("inputs", text_batch, None)
    traits = {"causal": None, "vocab_size": None, "max_seq_len": None}
    return [ModelDecl(name, factory, traits, {}, 0)], {name: hooks}


def _offline() -> None:
    # local_files_only=True already keeps from_pretrained off the network; these make sure no
    # other part of transformers or huggingface_hub tries (read when they are first imported).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=2)
def _pretrained(path: str):
    """The folder's model, loaded once per worker process; callers get deep copies."""
    _offline()
    try:
        import transformers
    except ImportError:
        from llmcheck.target.contract import ContractError

        raise ContractError(
            f"{path} is a Hugging Face model folder; install the extra: pip install 'llmcheck[hf]'"
        ) from None
    transformers.utils.logging.disable_progress_bar()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    cls = cls if cls is not None and hasattr(cls, "from_pretrained") else transformers.AutoModel
    safetensors = any(Path(path).glob("*.safetensors"))
    return cls.from_pretrained(
        path, config=config, local_files_only=True, use_safetensors=safetensors, weights_only=True
    ).eval()


def load_model(path: str):
    """A fresh copy of the folder's model (the factory of a folder target)."""
    return copy.deepcopy(_pretrained(path))


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def tokenizer_batch(path: str, batch_size: int, seq_len: int):
    """``batch_size`` windows of ``seq_len`` tokens of `TEXT`, each opened by the tokenizer's start
    token ([CLS], <s>) when it has one, with an all-ones attention mask."""
    import torch

    tok = _tokenizer(path)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    start = next((i for i in (tok.cls_token_id, tok.bos_token_id) if isinstance(i, int)), None)
    body = seq_len - (start is not None)
    ids = ids * (1 + (body + 7 * batch_size) // max(len(ids), 1))  # repeat short texts
    rows = [([start] if start is not None else []) + ids[7 * i : 7 * i + body] for i in range(batch_size)]
    input_ids = torch.tensor(rows, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
