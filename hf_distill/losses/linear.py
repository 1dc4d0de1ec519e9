"""`linear_distillation_loss`: the fused loss for one teacher given as tensors, with `distillation_loss`'s options."""

import torch

from .divergences import DivergenceSpec
from .fused import LOSS_CHUNK_SIZE, fused_distillation_loss
from .sources import LMHead, TeacherHeads
from .sparse import TopKTeacher


def linear_distillation_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    alpha: float = 0.5,
    loss_type: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    chunk_size: int = LOSS_CHUNK_SIZE,
    reduction: str = "sum",
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    teacher_topk: TopKTeacher | None = None,
    sparse_mode: str = "renormalized",
) -> torch.Tensor:
    """`alpha * cross_entropy_loss + (1 - alpha) * distillation_loss` of the logits `hidden @ weight.T`, chunked.

    The same value and gradients as projecting to full logits, but only `chunk_size` valid positions are projected
    at a time (`fused_distillation_loss`, which also takes ensembles and returns the CE and divergence apart).

    Args:
        student_hidden / teacher_hidden: final hidden states `(B, L, H_s)` / `(B, L, H_t)`; the widths may differ.
        student_weight / teacher_weight: LM-head weights `(V_s, H_s)` / `(V_t, H_t)`. The divergence uses the first
            `min(V_s, V_t)` vocabulary entries (the models may pad their vocabularies differently), the CE all `V_s`.
        labels: `(B, L)` targets aligned with the positions (already shifted); `-100` marks ignored positions.
        student_bias / teacher_bias: optional LM-head biases `(V_s,)` / `(V_t,)`.
        alpha: weight of the CE, in [0, 1]. With `alpha=1.0` the teacher is never used and may be None. With
            `alpha=0.0` the CE gets no gradient.
        loss_type, temperature, beta, skew_lambda, reduction: as in `distillation_loss`.
        chunk_size: number of valid positions projected at once, >= 1 (see `fused_distillation_loss`).
        student_logit_scale / teacher_logit_scale: logits are `(hidden @ weight.T + bias) * logit_scale`.
        student_softcap / teacher_softcap: when not None, logits become `softcap * tanh(logits / softcap)`
            (Gemma-2 final-logit soft-capping), applied after the scale.
        teacher_topk / sparse_mode: a teacher known only by its top-k (a `TopKTeacher`, e.g. from a teacher cache),
            given instead of `teacher_hidden` and `teacher_weight`: the divergence is then that of
            `sparse_distillation_loss` with `mode=sparse_mode`.

    The loss can be backpropagated once only (its gradients are computed in the forward pass).
    """
    spec = DivergenceSpec(loss_type, temperature, beta, skew_lambda, alpha)
    teacher = None
    if teacher_topk is not None:
        if teacher_hidden is not None or teacher_weight is not None:
            raise ValueError("give the teacher as teacher_hidden and teacher_weight, or as teacher_topk, not both")
        teacher = teacher_topk._replace(mode=sparse_mode)
    elif teacher_hidden is not None and teacher_weight is not None:
        head = LMHead(teacher_weight, teacher_bias, teacher_logit_scale, teacher_softcap)
        teacher = TeacherHeads([teacher_hidden], [head])
    student_head = LMHead(student_weight, student_bias, student_logit_scale, student_softcap)
    return fused_distillation_loss(student_hidden, student_head, teacher, labels, spec, chunk_size, reduction).loss
