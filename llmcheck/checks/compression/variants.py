"""Compressed variants of a model and what they changed (worker side, imports torch).

A variant is built from a deep copy of the baseline, so the baseline stays intact for comparison.
`coverage` says which weight matrices a variant actually compressed: the pitfall it exposes is a
recipe that silently skips most of a model, as ``quantize_dynamic({nn.Linear})`` does with the
``Conv1D`` layers of Hugging Face GPT-2.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Mapping

import torch
import torch.nn as nn

from llmcheck.target.tensors import first_tensor

TORCHAO_HINT = "pip install llmcheck[torchao]"
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


class VariantSkip(Exception):
    """The variant cannot be built here (missing extra, wrong device, nothing declared); the reason."""


def build(
    kind: str, baseline: nn.Module, target, sparsity: float | None = None, int4_group_size: int = 128
) -> nn.Module:
    """The ``kind`` variant of ``baseline`` in eval mode; raises VariantSkip when it does not apply."""
    if kind == "compressed":
        return _user_variant(target)
    model = copy.deepcopy(baseline)
    if kind == "int8_dynamic":
        model = _int8_dynamic(model, target.device)
    elif kind in ("fp16", "bf16"):
        model = model.to(torch.float16 if kind == "fp16" else torch.bfloat16)
    elif kind.startswith("torchao_"):
        model = _torchao(model, kind, target.device, int4_group_size)
    elif kind in ("prune_unstructured", "prune_structured"):
        _prune(model, kind, sparsity)
    else:
        raise ValueError(f"unknown variant {kind!r}")
    return model.eval()


def _int8_dynamic(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type != "cpu":
        raise VariantSkip(f"torch.ao dynamic quantization runs on CPU only; this run uses device {device}")
    if torch.backends.quantized.engine == "none":
        raise VariantSkip("this torch build has no quantized engine (fbgemm, x86 or qnnpack)")
    with warnings.catch_warnings():  # deprecated in favour of torchao, still the CPU int8 path in torch 2.x
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _torchao(model: nn.Module, kind: str, device: torch.device, group_size: int) -> nn.Module:
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise VariantSkip(f"torchao is not importable ({exc}); {TORCHAO_HINT}") from None
    if kind == "torchao_int8":
        config = Int8WeightOnlyConfig()
    else:  # int4 kernels (tinygemm) take bfloat16 activations
        model = model.to(torch.bfloat16)
        config = _int4_config(Int4WeightOnlyConfig, group_size, device)
    quantize_(model, config)
    return model


def _int4_config(default, group_size: int, device: torch.device):
    """torchao's int4 weight-only config for ``device``. CPU needs the "opaque" packing, whose home
    moved between torchao releases: a prototype config (0.15+), a packing format (0.13-0.14)."""
    if device.type == "cpu":
        try:
            from torchao.prototype.int4_opaque_tensor import Int4WeightOnlyOpaqueTensorConfig

            return Int4WeightOnlyOpaqueTensorConfig(group_size=group_size)
        except ImportError:
            pass
        try:
            return default(group_size=group_size, int4_packing_format="opaque")
        except TypeError:  # older torchao: no packing formats
            pass
    return default(group_size=group_size)


def _prune(model: nn.Module, kind: str, sparsity: float) -> None:
    """Magnitude pruning of every eligible weight matrix, made permanent with ``prune.remove``.

    Unstructured: the smallest ``sparsity`` fraction of each matrix by |w| (L1). Structured: whole
    slices along dim 0 (output channels of ``nn.Linear``) with the smallest L2 norm.
    """
    from torch.nn.utils import prune

    modules = dict(model.named_modules())
    for owner, pname, _, _ in eligible(model):
        module = modules[owner]
        if kind == "prune_unstructured":
            prune.l1_unstructured(module, pname, amount=sparsity)
        else:
            prune.ln_structured(module, pname, amount=sparsity, n=2, dim=0)
        prune.remove(module, pname)


def _user_variant(target) -> nn.Module:
    from llmcheck.target.model import ContractError, seed_everything, user_call

    hook = target.hooks.get("compressed")
    if hook is None:
        raise VariantSkip(
            "the model file declares no @llmcheck.compressed factory (a distilled student or "
            "a model compressed by your own recipe)"
        )
    seed_everything(target.seed)
    model = user_call(f"@llmcheck.compressed {hook.fn.__name__}()", hook.fn)
    if not isinstance(model, nn.Module):
        raise ContractError(
            f"@llmcheck.compressed {hook.fn.__name__}() returned {type(model).__name__}; expected a torch.nn.Module"
        )
    return model.to(target.device).eval()


def eligible(model: nn.Module) -> list[tuple[str, str, str, int]]:
    """(owner module, parameter name, owner type, bytes) of every weight matrix a compression targets.

    A parameter of two or more dimensions counts unless embedding tables are its only users; a
    tied LM head counts once, under the first non-embedding module that holds it.
    """
    found, seen = [], set()
    for owner, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() < 2 or isinstance(module, EMBEDDINGS) or id(param) in seen:
                continue
            seen.add(id(param))
            found.append((owner, pname, type(module).__name__, param.numel() * param.element_size()))
    return found


def coverage(baseline: nn.Module, variant: nn.Module) -> dict:
    """Which eligible weight matrices the variant changed, and the fraction of their bytes."""
    base_modules, var_modules = dict(baseline.named_modules()), dict(variant.named_modules())
    changed, unchanged, by_type, total, done = {}, [], {}, 0, 0
    for owner, pname, tname, nbytes in eligible(baseline):
        how = _change(base_modules[owner], var_modules.get(owner), pname)
        name = f"{owner}.{pname}" if owner else pname
        total += nbytes
        if how is None:
            unchanged.append(f"{name} ({tname})")
            kind = owner_type(base_modules[owner])
            by_type[kind] = by_type.get(kind, 0) + nbytes
        else:
            changed[name] = how
            done += nbytes
    return {
        "coverage": done / total if total else None,
        "eligible_bytes": total,
        "compressed_bytes": done,
        "changed": changed,
        "unchanged": unchanged,
        "unchanged_types": by_type,  # module type -> bytes of its eligible weights left as they were
    }


def owner_type(module: nn.Module) -> str:
    """The module's class as a reader knows it: ``nn.Linear``, ``transformers Conv1D`` (a class from
    an installed package, with the package), or the bare name of the model's own class."""
    cls = type(module)
    root = cls.__module__.split(".")[0]
    if root == "torch":
        return f"nn.{cls.__name__}"
    path = str(getattr(sys.modules.get(root), "__file__", "") or "")
    return f"{root} {cls.__name__}" if "site-packages" in path or "dist-packages" in path else cls.__name__


def type_name(module: nn.Module) -> str:
    """The class name, qualified for torch.ao's look-alikes (``quantized.dynamic.Linear``)."""
    cls = type(module)
    if cls.__module__.startswith("torch.ao.nn."):
        return f"{cls.__module__[len('torch.ao.nn.') :].split('.modules')[0]}.{cls.__name__}"
    return cls.__name__


def _change(base: nn.Module, var: nn.Module | None, pname: str) -> str | None:
    """How the variant's module differs from the baseline's for one weight, or None when it does not."""
    if var is None:
        return "removed"
    if type(var) is not type(base):
        return f"{type_name(base)} -> {type_name(var)}"
    before, after = getattr(base, pname), getattr(var, pname, None)
    if not isinstance(after, torch.Tensor):
        return f"{pname} replaced by {type(after).__name__}"
    if type(after) is not type(before):
        return f"{type(before).__name__} -> {type(after).__name__}"
    if after.dtype != before.dtype:
        return f"{before.dtype} -> {after.dtype}".replace("torch.", "")
    if after.shape != before.shape:
        return f"shape {list(before.shape)} -> {list(after.shape)}"
    zeros = float((after == 0).float().mean())
    if zeros > float((before == 0).float().mean()) + 1e-9:
        return f"{zeros:.0%} zeros"
    return None


def dtype_of(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in: its first floating parameter's or buffer's."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def cast(batch, dtype: torch.dtype):
    """``batch`` with its floating tensors in ``dtype`` (token ids and masks stay as they are)."""
    if isinstance(batch, Mapping):
        return {k: cast(v, dtype) for k, v in batch.items()}
    return batch.to(dtype) if isinstance(batch, torch.Tensor) and batch.is_floating_point() else batch


@torch.no_grad()
def local_errors(target, baseline: nn.Module, variant: nn.Module, batch, owners: list[str], top: int = 3) -> list[dict]:
    """Relative output error of each changed module fed the baseline's own input: where error enters.

    Downstream modules inherit upstream error, so comparing whole-model activations blames the wrong
    layer; feeding each variant module the baseline's input isolates what that module alone adds.
    """
    base_modules, var_modules = dict(baseline.named_modules()), dict(variant.named_modules())
    owners = [o for o in dict.fromkeys(owners) if o in base_modules and o in var_modules]
    seen: dict[str, tuple] = {}

    def keep(owner, args, out) -> None:  # returns None: a forward hook's return value replaces the output
        seen.setdefault(owner, (args, out))

    handles = [base_modules[o].register_forward_hook(lambda m, a, out, o=o: keep(o, a, out)) for o in owners]
    try:
        target.forward(baseline, batch)
    finally:
        for h in handles:
            h.remove()
    dtype, found = dtype_of(variant), []
    for owner, (args, out) in seen.items():
        expected = first_tensor(out)
        if len(args) != 1 or not isinstance(args[0], torch.Tensor) or expected is None:
            continue
        try:
            got = first_tensor(var_modules[owner](cast(args[0], dtype)))
        except Exception:  # a replaced module with another calling convention: no local comparison
            continue
        if got is None or got.shape != expected.shape:
            continue
        expected, got = expected.float(), got.float()
        rel = float((got - expected).norm() / expected.norm().clamp_min(1e-12))
        rel = rel if math.isfinite(rel) else float("inf")
        found.append(
            {
                "module": owner,
                "type": f"{type_name(base_modules[owner])} -> {type_name(var_modules[owner])}",
                "rel_error": rel,
            }
        )
    return sorted(found, key=lambda e: -e["rel_error"])[:top]


# -- accuracy against the baseline ---------------------------------------------------------------
CE_KINDS = ("model", "user", "next-token cross-entropy")  # losses whose exp() is a perplexity


@torch.no_grad()
def outputs(target, model: nn.Module, batches: list, with_loss: bool) -> tuple[list[torch.Tensor], float | None]:
    """Float32 CPU outputs of ``model`` on ``batches`` and, when asked, its mean cross-entropy on them."""
    dtype, logits, losses = dtype_of(model), [], []
    for batch in batches:
        batch = cast(batch, dtype)
        logits.append(target.logits(target.forward(model, batch)).detach().float().cpu())
        if with_loss:
            value, kind = target.loss(model, batch)
            losses.append(float(value) if kind in CE_KINDS else math.nan)
    mean = sum(losses) / len(losses) if losses else None
    return logits, (mean if mean is not None and not math.isnan(mean) else None)


def mask_of(batch, shape) -> torch.Tensor | None:
    """The attention mask of a batch as a bool tensor of the outputs' leading shape, if it has one."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask.bool().cpu() if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(shape) else None


def compare(reference: list[torch.Tensor], got: list[torch.Tensor], masks: list, lm: bool) -> dict:
    """Next-token KL(baseline || variant), top-1 agreement and relative logit error for an LM head;
    relative error and cosine similarity for other outputs (hidden states, embeddings)."""
    acc = dict(positions=0, kl=0.0, kl_max=0.0, agree=0, cosine=0.0, sq_err=0.0, sq_ref=0.0, nonfinite=0)
    for ref, out, mask in zip(reference, got, masks):
        if out.shape != ref.shape:
            raise ValueError(f"the variant's output has shape {list(out.shape)}, the baseline's {list(ref.shape)}")
        ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        if mask is not None:
            keep = mask.reshape(-1)
            ref, out = ref[keep], out[keep]
        acc["nonfinite"] += int((~torch.isfinite(out)).sum())
        if lm:
            log_p, log_q = ref.log_softmax(-1), out.log_softmax(-1)
            kl = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
            acc["kl"] += float(kl.sum())
            acc["kl_max"] = max(acc["kl_max"], float(kl.max())) if kl.numel() else acc["kl_max"]
            acc["agree"] += int((ref.argmax(-1) == out.argmax(-1)).sum())
            ref, out = ref - ref.mean(-1, keepdim=True), out - out.mean(-1, keepdim=True)  # softmax ignores shifts
        else:
            acc["cosine"] += float(torch.nn.functional.cosine_similarity(ref, out, dim=-1).sum())
        acc["sq_err"] += float((out - ref).pow(2).sum())
        acc["sq_ref"] += float(ref.pow(2).sum())
        acc["positions"] += ref.shape[0]
    return _summary(acc, lm)


def _summary(acc: dict, lm: bool) -> dict:
    n = max(acc["positions"], 1)
    out = {
        "positions": acc["positions"],
        "nonfinite": acc["nonfinite"],
        "rel_error": math.sqrt(acc["sq_err"] / acc["sq_ref"]) if acc["sq_ref"] > 0 else math.nan,
    }
    if lm:
        out.update(kl=acc["kl"] / n, kl_max=acc["kl_max"], top1=acc["agree"] / n)
    else:
        out["cosine"] = acc["cosine"] / n
    return out
