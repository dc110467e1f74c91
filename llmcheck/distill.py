"""Knowledge distillation: the soft-target loss a student is trained with (Hinton et al., 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

The T^2 factor keeps the soft part's gradients at the same scale as the hard part's when the
temperature changes: the gradient of the softened KL with respect to the logits shrinks as 1/T^2
(Hinton et al., "Distilling the Knowledge in a Neural Network", section 2). Forgetting it, or
dividing only one side by T, are the usual mistakes. Importing this module does not import torch.
"""

from __future__ import annotations

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default: padding labels


def loss(
    student_logits,
    teacher_logits,
    labels=None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
):
    """The distillation loss of ``student_logits`` against ``teacher_logits`` (both ``[..., vocab]``).

    ``labels`` (``[...]``, aligned with the logits: shift them yourself for next-token prediction)
    add the hard-label cross-entropy weighted ``1 - alpha``; positions labelled ``ignore_index`` are
    left out of both parts. With ``labels=None`` the result is the soft part alone, unweighted.
    The teacher is detached: no gradient reaches it. Computed in float32 whatever the logits' dtype.
    """
    import torch.nn.functional as F

    _validate(student_logits, teacher_logits, labels, temperature, alpha)
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab).float()
    teacher = teacher_logits.detach().reshape(-1, vocab).float()
    per_position = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="none",
        log_target=True,
    ).sum(-1)
    if labels is None:
        return per_position.mean() * temperature**2
    flat = labels.reshape(-1)
    keep = flat != ignore_index
    if not bool(keep.any()):
        raise ValueError(f"every label is ignore_index ({ignore_index}); nothing to distil on")
    soft = per_position[keep].mean() * temperature**2
    hard = F.cross_entropy(student, flat, ignore_index=ignore_index)
    return alpha * soft + (1 - alpha) * hard


def _validate(student, teacher, labels, temperature, alpha) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {list(student.shape)} and teacher logits {list(teacher.shape)} must have the same shape"
        )
    if labels is not None and tuple(labels.shape) != tuple(student.shape[:-1]):
        raise ValueError(
            f"labels {list(labels.shape)} must match the logits without their vocabulary "
            f"dimension, {list(student.shape[:-1])}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature = {temperature!r}: expected a number > 0 (1 leaves the logits as they are)")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha = {alpha!r}: expected a weight in [0, 1] (the soft part's share of the loss)")
