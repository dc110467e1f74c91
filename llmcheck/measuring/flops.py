"""FLOPs per token, achieved FLOP/s and model FLOPs utilisation (MFU).

Analytic (Kaplan et al. 2020, §2.1): a forward pass costs 2N FLOPs per token, N the parameters
used in matrix multiplies (embedding tables excluded unless tied to the output layer), plus
2·n_layer·n_ctx·d_model for attention when the model's config gives the shape; a training step
3x that (6N). Counted: ``torch.utils.flop_counter.FlopCounterMode`` over one real call, which
sees attention and anything the formula misses. MFU (PaLM, App. B) = achieved FLOP/s / peak.
"""

from __future__ import annotations

from typing import Any

# Dense peak TFLOP/s (no structured sparsity): (bf16/fp16 tensor cores, fp32 without TF32, which
# PyTorch leaves off for matmuls by default). Checked in order, so specific names come first.
# A100 / H100 figures as torchtitan uses them; the rest from NVIDIA's product datasheets.
PEAK_TFLOPS: list[tuple[str, float | None, float | None]] = [
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),  # SXM
    ("A100", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10G", None, None),  # AWS variant: clocks differ from the A10 datasheet; pass peak_tflops
    ("A10", 125.0, 31.2),
    ("V100", 125.0, 15.7),  # fp16 only: no bf16 tensor cores
    ("T4", 65.0, 8.1),
]


def peak_flops(device_name: str, precision: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for a device and precision; None when unknown."""
    if override_tflops:
        return override_tflops * 1e12, "peak_tflops setting"
    for key, half, single in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            value = single if precision == "float32" else half
            return (value * 1e12 if value else None), f"table entry {key!r} ({precision})"
    return None, f"no peak FLOP/s known for {device_name!r}; set peak_tflops"


def matmul_params(model) -> int:
    """N: parameters that take part in matrix multiplies (embedding tables excluded, unless
    they are also an ``nn.Linear`` weight, as with a tied output layer)."""
    import torch

    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sum(q.numel() for q in model.parameters() if id(q) not in tables or id(q) in linear)


def shape_from_config(model) -> tuple[int, int] | None:
    """(n_layer, d_model) from a Hugging Face-style config, when the model has one."""
    config = getattr(model, "config", None)
    layers = next(
        (getattr(config, k) for k in ("num_hidden_layers", "n_layer") if isinstance(getattr(config, k, None), int)),
        None,
    )
    width = next(
        (getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if isinstance(getattr(config, k, None), int)),
        None,
    )
    return (layers, width) if layers and width else None


def analytic(model, seq_len: int) -> dict[str, Any]:
    """Kaplan's FLOPs per token for a forward and a training step at context ``seq_len``."""
    n = matmul_params(model)
    shape = shape_from_config(model)
    attention = 2 * shape[0] * seq_len * shape[1] if shape else 0
    return {
        "params_matmul": n,
        "forward_per_token": 2 * n + attention,
        "train_per_token": 3 * (2 * n + attention),
        "attention_term": "2·n_layer·n_ctx·d_model"
        if shape
        else "not included: the model has no config with its shape",
    }


def counted(fn, tokens: int) -> float:
    """FLOPs per token of one ``fn()`` call, by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / tokens


def utilisation(flops_per_token: float | None, tokens_per_s: float | None, peak: float | None) -> dict[str, Any]:
    achieved = flops_per_token * tokens_per_s if flops_per_token and tokens_per_s else None
    return {"achieved_flops_per_s": achieved, "mfu": achieved / peak if achieved and peak else None}
