"""Loads a model file into Targets: the factory, its traits, inputs, forward, logits and loss.

Runs only inside the worker process (it imports torch). Every call into user code goes through
`user_call`, so an exception there is reported as the user's, with their traceback, not ours.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import random
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmcheck.declare import HookDecl, ModelDecl, declarations
from llmcheck.target import tokens as token_ids
from llmcheck.target.calls import Calls
from llmcheck.target.contract import EXAMPLE, ContractError, UserCodeError, user_call  # noqa: F401  (the target's errors)
from llmcheck.target.signature import ForwardSignature, forward_signature
from llmcheck.target.steps import rng_state, set_rng_state


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (when imported) and torch's RNGs (CUDA included)."""
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed % 2**32)
    torch.manual_seed(seed)


def import_model_file(path: Path):
    """Import ``path`` once under a private module name; its folder joins sys.path for siblings."""
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"llmcheck_model_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_declarations(path: Path) -> tuple[list[ModelDecl], dict[str, dict[str, HookDecl]]]:
    """The file's models and, per model, the hook of each kind that applies to it.

    A folder (a Hugging Face model directory with config.json and weights) is one model."""
    if path.is_dir():
        from llmcheck.target.hf import folder_declarations

        return folder_declarations(path)
    models, hooks = declarations(vars(import_model_file(path)))
    if not models:
        raise ContractError(
            f"{path} declares no model. Mark a zero-argument factory with @llmcheck.model, for example:\n\n{EXAMPLE}"
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ContractError(
            f"{path} declares the model name {_first_dup(names)!r} twice; pass name=... to tell them apart"
        )
    per_model: dict[str, dict[str, HookDecl]] = {n: {} for n in names}
    for hook in hooks:
        for target in hook.models or names:
            if target not in per_model:
                raise ContractError(
                    f"@llmcheck.{hook.kind}({hook.fn.__name__}) names model {target!r}, "
                    f"which {path.name} does not declare; declared: {', '.join(names)}"
                )
            other = per_model[target].get(hook.kind)
            if other is not None:
                raise ContractError(
                    f"two @llmcheck.{hook.kind} hooks apply to model {target!r}: "
                    f"{other.fn.__name__} and {hook.fn.__name__}; pass models=... to each"
                )
            per_model[target][hook.kind] = hook
    return models, per_model


def _first_dup(names: list[str]) -> str:
    return next(n for n in names if names.count(n) > 1)


@dataclass
class Traits:
    causal: bool | None
    vocab_size: int | None
    max_seq_len: int | None
    source: dict[str, str]  # trait -> where its value came from ("declared", "config", "inferred")


def _config_traits(model) -> dict[str, Any]:
    """Traits a Hugging Face ``PreTrainedModel`` carries in its config."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "vocab_size"):
        return {}
    max_len = next(
        (
            getattr(config, k)
            for k in ("max_position_embeddings", "n_positions", "n_ctx")
            if isinstance(getattr(config, k, None), int)
        ),
        None,
    )
    return {"causal": _hf_causal(model, config), "vocab_size": config.vocab_size, "max_seq_len": max_len}


def _hf_causal(model, config) -> bool:
    """A decoder: ``is_decoder``, a causal-LM class, or a decoder-only family (GPT-2, Llama: in
    transformers' causal-LM mapping but not its masked-LM one, which holds BERT-style encoders)."""
    if getattr(config, "is_decoder", False) or type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return True
    kind = getattr(config, "model_type", None)
    if not kind or getattr(config, "is_encoder_decoder", False) or "transformers" not in sys.modules:
        return False  # not a transformers config (a nanoGPT-style one): no import of transformers
    from transformers.models.auto import modeling_auto as auto

    return kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _inferred_traits(model) -> dict[str, Any]:
    """The vocabulary size of the first ``nn.Embedding``: a guess, used only when nothing is declared."""
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    return {"vocab_size": first.num_embeddings} if first is not None else {}


def resolve_traits(declared: dict[str, Any], model) -> Traits:
    values, source = {}, {}
    for origin, found in (
        ("declared", declared),
        ("config", _config_traits(model)),
        ("inferred", _inferred_traits(model)),
    ):
        for key, value in found.items():
            if value is not None and key not in values:
                values[key], source[key] = value, origin
    return Traits(values.get("causal"), values.get("vocab_size"), values.get("max_seq_len"), source)


class Target:
    """One declared model with its hooks and the run's settings, ready for checks to use."""

    def __init__(
        self, decl: ModelDecl, hooks: dict[str, HookDecl], settings: Mapping[str, Any], path: Path | None = None
    ):
        self.decl, self.hooks, self.settings = decl, hooks, settings
        self.path = path  # the model file or folder it was declared in (to load it again elsewhere)
        self.name = decl.name
        self.device = torch.device(settings.get("device", "cpu"))
        self.seed = int(settings.get("seed", 0))
        self._traits: Traits | None = None
        self._signature = ForwardSignature()
        # The forward parameter that makes it return logits at every position (nanoGPT's targets):
        # None until a call shows it is needed, False once a call shows it is not.
        self._full_logits_with: str | None | bool = None
        self.calls = Calls()  # counts forwards and backwards for the watchdog; the worker installs a Heartbeat
        # Measured costs (llmcheck.measuring.budget.step_costs): the worker hands every check of one
        # model the same dict, so the model's step time is measured once per worker.
        self.step_costs: dict[str, Any] = {}
        self.builds, self.build_s = 0, 0.0  # factory calls and their seconds (the report's build phase)

    # -- the model -------------------------------------------------------------------------
    def build(self, seed: int | None = None):
        """A fresh model from the factory, with every RNG seeded first (``seed`` defaults to the run's)."""
        started = time.perf_counter()
        seed_everything(self.seed if seed is None else seed)
        model = user_call(f"model factory {self.name}()", self.decl.factory)
        if not isinstance(model, torch.nn.Module):
            raise ContractError(
                f"model factory {self.name}() returned {type(model).__name__}; expected a fresh torch.nn.Module"
            )
        if self._traits is None:
            self._traits = resolve_traits(self.decl.traits, model)
            self._signature = forward_signature(model)
        model = model.to(self.device)
        self.builds, self.build_s = self.builds + 1, self.build_s + time.perf_counter() - started
        return model

    @property
    def traits(self) -> Traits:
        if self._traits is None:
            self.build()
        return self._traits

    def takes(self, keyword: str) -> bool:
        """Whether the model's forward takes ``keyword`` (input_ids, attention_mask, labels, ...),
        in its own signature or through ``**kwargs`` (see `llmcheck.target.signature`)."""
        _ = self.traits  # resolves the signature too
        return self._signature.takes(keyword)

    def takes_from(self, keyword: str) -> str | None:
        """Where the forward's ``keyword`` was found: ``"forward"``, or the base class or wrapped
        model that ``**kwargs`` leads to; None when it does not take it."""
        _ = self.traits
        return self._signature.source(keyword)

    # -- inputs ----------------------------------------------------------------------------
    def shape(self, batch_size: int | None = None, seq_len: int | None = None) -> tuple[int, int]:
        bs = batch_size or int(self.settings.get("batch_size", 2))
        sl = seq_len or int(self.settings.get("seq_len", 16))
        if self.traits.max_seq_len:
            sl = min(sl, self.traits.max_seq_len)
        return bs, sl

    def batch(self, batch_size: int | None = None, seq_len: int | None = None, seed: int = 0, exact: bool = True):
        """A batch from ``@llmcheck.inputs``, or random token ids when the vocabulary is known.

        The hook's batch is validated before any model sees it: its token ids must have the shape
        asked, [batch_size, seq_len] (``exact=False`` lets the length differ, for a check that asks
        the hook what lengths it can make), else a ContractError names the hook."""
        bs, sl = self.shape(batch_size, seq_len)
        hook = self.hooks.get("inputs")
        if hook is not None:
            seed_everything(self.seed + 1000 + seed)
            what = f"@llmcheck.inputs {hook.fn.__name__}({bs}, {sl})"
            batch = user_call(what, hook.fn, bs, sl)
            _validate_batch(batch, bs, hook.fn.__name__, sl)
            self._validate_tokens(batch, what, bs, sl if exact else None)
        else:
            vocab = self.traits.vocab_size
            if vocab is None:
                raise ContractError(
                    f"model {self.name} has no inputs: declare @llmcheck.inputs, or "
                    f"@llmcheck.model(vocab_size=N) for random token ids"
                )
            gen = torch.Generator().manual_seed(self.seed + 1000 + seed)
            batch = self.ids_batch(torch.randint(0, vocab, (bs, sl), generator=gen))
        return _to(batch, self.device)

    def _validate_tokens(self, batch, what: str, bs: int, sl: int | None) -> None:
        declared = self.decl.token_key
        if declared is not None and isinstance(batch, Mapping) and declared not in batch:
            raise ContractError(
                f"{what} returned the keys {sorted(batch)}, but @llmcheck.model(token_key={declared!r}) "
                f"says the token ids are under {declared!r}"
            )
        key, ids = self.token_entry(batch)
        if ids is None or ids.dim() != 2 or sl is None or ids.shape[1] == sl:
            return
        raise ContractError(
            f"{what} returned {key or 'token ids'} of shape {list(ids.shape)}; asked for [{bs}, {sl}] "
            f"(batch_size, seq_len). The hook must give exactly the length asked: truncate or pad to seq_len "
            f"(a tokenizer adding [CLS]/[SEP] or padding to a minimum length cannot make {sl} tokens)"
        )

    def token_entry(self, batch) -> tuple[str | None, torch.Tensor | None]:
        """(key, token ids) of ``batch``: found by what they are (`llmcheck.target.tokens`); the key is
        None for a bare tensor, the ids None when the batch has none."""
        _ = self.traits
        return token_ids.find(batch, self._signature.first, self.decl.token_key)

    def tokens(self, batch) -> torch.Tensor | None:
        """The token ids of a batch: the integer tensor bound to forward's first parameter, whatever
        its key (``input_ids``, ``idx``, a bare tensor), or the declared ``token_key``."""
        return self.token_entry(batch)[1]

    def no_tokens(self, batch, use: str) -> str:
        """Why ``batch`` has no [batch, seq] token ids for ``use`` (a skip reason with the fix)."""
        _ = self.traits
        reason = token_ids.why_not_found(batch, self._signature.first, self.decl.token_key)
        return f"no [batch, seq] token ids to {use}: {reason}"

    def with_tokens(self, batch, ids: torch.Tensor):
        """``batch`` with its token ids replaced by ``ids``; labels and next-token targets computed
        from the old ids follow (`llmcheck.target.tokens.replace`), other entries are kept."""
        key = self.token_entry(batch)[0] if isinstance(batch, Mapping) else None
        return token_ids.replace(batch, key or self.ids_key(), ids)

    def cut(self, batch, keep: int):
        """The first ``keep`` positions of ``batch``: token ids and every tensor of their length."""
        return token_ids.cut(batch, self.tokens(batch).shape[1], keep)

    def ids_key(self) -> str:
        """The key token ids go under in a batch llmcheck makes: the declared ``token_key``, else
        forward's first parameter, else ``input_ids``."""
        _ = self.traits
        return self.decl.token_key or self._signature.first or token_ids.IDS_KEY

    def ids_batch(self, ids: torch.Tensor, mask: torch.Tensor | None = None):
        """A batch of only these token ids in the form the forward takes: a mapping under forward's
        first parameter (with ``mask``, or all ones, when it takes ``attention_mask``), or the bare
        tensor for a forward that takes neither a mask nor ``input_ids``."""
        key = self.ids_key()
        if not self.takes("attention_mask") and key != token_ids.IDS_KEY:
            return ids
        batch = {key: ids}
        if self.takes("attention_mask"):
            batch["attention_mask"] = torch.ones_like(ids) if mask is None else mask
        return batch

    def with_mask(self, batch, ids: torch.Tensor, mask: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        """(batch, extra forward keywords) for ``ids`` under ``mask``; position ids as transformers'
        generate() makes them for padded batches (``mask.cumsum(-1) - 1``) when the forward takes them."""
        extra = {}
        if self.takes("position_ids") and not (isinstance(batch, Mapping) and "position_ids" in batch):
            extra["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if isinstance(batch, Mapping):
            return {**self.with_tokens(batch, ids), "attention_mask": mask}, extra
        return ids, {**extra, "attention_mask": mask}

    def input_embedding(self, model) -> torch.nn.Module | None:
        """The module that maps token ids to input embeddings: ``get_input_embeddings()`` for
        Hugging Face models, else the ``nn.Embedding`` whose size is the vocabulary."""
        getter = getattr(model, "get_input_embeddings", None)
        if callable(getter):
            try:
                found = getter()
            except (NotImplementedError, AttributeError):
                found = None
            if isinstance(found, torch.nn.Module):
                return found
        embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        vocab = self.traits.vocab_size
        return next((m for m in embeddings if m.num_embeddings == vocab), embeddings[0] if embeddings else None)

    def cache_keyword(self) -> str | None:
        """The forward's cache keyword: ``past_key_values`` (the transformers convention), ``cache``
        (transformers 5.x), or None when the model takes no cache."""
        return next((k for k in ("past_key_values", "cache") if self.takes(k)), None)

    # -- forward, logits, loss -------------------------------------------------------------
    def forward(self, model, batch, **extra):
        """``model(**batch, **extra)`` (``model(batch, **extra)`` for a tensor), as the user's code.

        A forward that returns logits for the last position only unless it is given targets
        (nanoGPT: ``forward(idx, targets=None)`` gives [B, 1, V]) is found on its first call: it is
        called again, with the RNGs as they were, with next-token targets under its second parameter,
        and when that gives logits at every position those targets are passed on every later call
        whose batch does not declare its own."""
        _ = self.traits  # resolves the signature
        key = self._full_logits_with
        if isinstance(key, str) and not _given(batch, extra, key):
            ids = self.tokens(batch)
            if ids is not None and ids.dim() == 2:
                extra = {**extra, key: token_ids.next_token_targets(ids)}
        if key is None and self._signature.second in NOT_TARGETS:
            self._full_logits_with = key = False  # no free second parameter to pass targets to
        if key is not None or _given(batch, extra, self._signature.second):
            return self._call(model, batch, extra)  # decided, or the batch declares its targets
        before = rng_state()
        output = self._call(model, batch, extra)
        candidate = self._last_position_only(batch, extra, output)
        if candidate is None:
            return output
        after = rng_state()
        set_rng_state(before)
        ids = self.tokens(batch)
        try:
            retried = self._call(model, batch, {**extra, candidate: token_ids.next_token_targets(ids)})
        except UserCodeError:
            retried = None
        found = _logits_of(retried)
        if isinstance(found, torch.Tensor) and found.dim() >= 2 and found.shape[1] == ids.shape[1]:
            self._full_logits_with = candidate
            return retried
        self._full_logits_with = False
        set_rng_state(after)
        return output

    def _call(self, model, batch, extra: dict):
        what = f"forward of {self.name}"
        self.calls.forward_started()
        try:
            if isinstance(batch, Mapping):
                output = user_call(what, model, **batch, **extra)
            else:
                output = user_call(what, model, batch, **extra)
        finally:
            self.calls.forward_ended()
        self.calls.watch_backward(_logits_of(output))
        return output

    def _last_position_only(self, batch, extra: dict, output) -> str | None:
        """The parameter to retry with when ``output`` has logits for one position of [B, T > 1] ids
        and forward has a free second parameter (decided once: later calls do not ask again)."""
        candidate, ids = self._signature.second, self.tokens(batch)
        if ids is None or ids.dim() != 2 or ids.shape[1] < 2:
            return None
        found = _logits_of(output)
        one = isinstance(found, torch.Tensor) and found.dim() == 3 and tuple(found.shape[:2]) == (ids.shape[0], 1)
        if not one:
            self._full_logits_with = False
        return candidate if one else None

    def logits(self, output) -> torch.Tensor:
        """The logits of a forward output: the tensor, ``.logits``, ``["logits"]`` or the first element."""
        found = _logits_of(output)
        if found is None:
            raise ContractError(
                f"cannot find logits in the output of {self.name} ({type(output).__name__}): "
                f"return a tensor, an object with .logits, a mapping with 'logits', "
                f"or a tuple whose first element is the logits"
            )
        return found

    def loss(self, model, batch) -> tuple[torch.Tensor, str]:
        """(scalar loss, how it was computed) by the file's ``@llmcheck.loss`` or the default."""
        hook = self.hooks.get("loss")
        if hook is not None:
            value = user_call(f"@llmcheck.loss {hook.fn.__name__}", hook.fn, model, batch)
            return _scalar(value, f"@llmcheck.loss {hook.fn.__name__}"), "user"
        tokens = self.tokens(batch)
        if isinstance(batch, Mapping) and tokens is not None and self.takes("labels"):
            labels = tokens.masked_fill(batch["attention_mask"] == 0, -100) if "attention_mask" in batch else tokens
            found = _loss_of(self.forward(model, batch, **({} if "labels" in batch else {"labels": labels})))
            if found is not None:
                return found, "model"
        output = self.forward(model, batch)
        logits = self.logits(output)
        vocab = self.traits.vocab_size
        if tokens is not None and vocab and logits.dim() == 3 and logits.shape[-1] == vocab and tokens.shape[1] > 1:
            target = tokens[:, 1:]
            if isinstance(batch, Mapping) and "attention_mask" in batch:
                target = target.masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, vocab), target.reshape(-1), ignore_index=-100
            )
            return ce, "next-token cross-entropy"
        # No LM head (e.g. an encoder returning hidden states): a surrogate that every output feeds,
        # so a second output (a BERT pooler) gets gradient too.
        outputs = [t for t in _float_tensors(output) if t.requires_grad] or [logits]
        return sum(t.float().pow(2).mean() for t in outputs), "surrogate: mean square of outputs"

    def uniform_loss(self) -> float | None:
        """ln(vocab_size): the cross-entropy of a uniform prediction, the expected loss at init."""
        return math.log(self.traits.vocab_size) if self.traits.vocab_size else None

    # -- training hooks --------------------------------------------------------------------
    def optimizer(self, model, lr: float = 1e-3):
        """(optimizer, scheduler or None) from ``@llmcheck.optimizer``, else AdamW at ``lr``."""
        hook = self.hooks.get("optimizer")
        if hook is None:
            return torch.optim.AdamW(model.parameters(), lr=lr), None
        made = user_call(f"@llmcheck.optimizer {hook.fn.__name__}", hook.fn, model)
        opt, sched = made if isinstance(made, tuple) else (made, None)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ContractError(
                f"@llmcheck.optimizer {hook.fn.__name__} returned {type(made).__name__}; "
                f"expected an optimizer or (optimizer, scheduler)"
            )
        return opt, sched

    def eval_batches(self) -> Iterable | None:
        hook = self.hooks.get("eval_data")
        return None if hook is None else user_call(f"@llmcheck.eval_data {hook.fn.__name__}", hook.fn)

    def train_batches(self) -> Iterable | None:
        """The iterable of training batches from ``@llmcheck.train_data`` (a fresh one per call), or None."""
        hook = self.hooks.get("train_data")
        return None if hook is None else user_call(f"@llmcheck.train_data {hook.fn.__name__}", hook.fn)


# Second parameters that are never targets: not retried with token ids (see Target.forward).
NOT_TARGETS = frozenset({None, "attention_mask", "past_key_values", "cache", "position_ids", "token_type_ids"})


def _given(batch, extra: dict, key: str) -> bool:
    return key in extra or (isinstance(batch, Mapping) and key in batch)


def _logits_of(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):  # transformers ModelOutput without logits: first field
        first = output.to_tuple()[:1]
        return first[0] if first and isinstance(first[0], torch.Tensor) else None
    return None


def _float_tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors of a forward output (tensor, tuple, mapping or ModelOutput);
    other values, such as a transformers cache object, are left out."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _float_tensors(item)]
    return []


def _loss_of(output):
    for value in (getattr(output, "loss", None), output.get("loss") if isinstance(output, Mapping) else None):
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            return value
    return None


def _scalar(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ContractError(f"{what} returned {shape}; expected a scalar tensor")
    return value.reshape(())


def _validate_batch(batch, batch_size: int, fn: str, seq_len: int) -> None:
    expected = f"a Mapping of tensors (e.g. {{'input_ids': LongTensor[{batch_size}, {seq_len}]}}) or one tensor"
    if isinstance(batch, torch.Tensor):
        items = {"<tensor>": batch}
    elif isinstance(batch, Mapping):
        items = dict(batch)
        non_tensor = {k: type(v).__name__ for k, v in items.items() if not isinstance(v, torch.Tensor)}
        if non_tensor or not items:
            raise ContractError(
                f"@llmcheck.inputs {fn}({batch_size}, {seq_len}) returned a mapping with "
                f"{'non-tensor values ' + str(non_tensor) if non_tensor else 'no entries'}; expected {expected}"
            )
    else:
        raise ContractError(
            f"@llmcheck.inputs {fn}({batch_size}, {seq_len}) returned {type(batch).__name__}; expected {expected}"
        )
    for key, t in items.items():
        if t.dim() == 0 or t.shape[0] != batch_size:
            raise ContractError(
                f"@llmcheck.inputs {fn}({batch_size}, {seq_len}) returned {key} of shape "
                f"{list(t.shape)}; its first dimension must be the batch size {batch_size}"
            )


def _to(batch, device):
    if isinstance(batch, Mapping):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)
