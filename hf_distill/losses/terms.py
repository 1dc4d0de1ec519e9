"""The per-position terms every path computes, CE, divergence and top-1 agreement, and the dense entry point that
computes them from full logits."""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cross_vocab import CrossVocabTeacher, span_divergence
from .divergences import IGNORE_INDEX, DivergenceSpec, check_labels, mix, reduce, soften, tempered_divergence
from .ensemble import softened_teacher
from .sources import TeacherLogits
from .sparse import TopKTeacher, sparse_log_probs


class DistillationTerms(NamedTuple):
    """What the dense and the fused entry points return.

    `loss` is `alpha * ce + (1 - alpha) * kd` reduced as asked (a sum by default) and the only member with a
    gradient. `ce` (cross-entropy at temperature 1 on the full student vocabulary), `kd` (divergence times
    `temperature**2`, 0 without a teacher), `agree` (1.0 where the student's and the teacher's most likely tokens
    are the same, 0 without a teacher) and `teacher_logprob` (the teacher's log-probability of the target token,
    when asked with `score_targets`, else 0) are detached float32 values `(N,)` at the N valid positions of `mask`
    `(B, L)`.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    agree: torch.Tensor
    mask: torch.Tensor
    teacher_logprob: torch.Tensor | None = None

    def per_example(self) -> dict[str, torch.Tensor]:
        """Sums over each example's valid positions `(B,)`: `ce`, `kd`, `agree` and `tokens` (their number)."""
        sums = {name: reduce(getattr(self, name), self.mask, "none").sum(-1) for name in ("ce", "kd", "agree")}
        return {**sums, "tokens": self.mask.sum(-1).float()}


def position_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher: torch.Tensor | TopKTeacher | None,
    spec: DivergenceSpec,
    kd_vocab: int,
    score_targets: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """CE, divergence, agreement and (with `score_targets`) the teacher's log-probability of each target `(N,)`, of
    `(N, V)` float32 student logits at N valid positions.

    `teacher` is the softened teacher distribution `(N, kd_vocab)` as log-probabilities, or a top-k teacher's rows,
    or None (no divergence, no agreement). With `alpha == 0` the CE is reported but computed without a gradient.
    The target's log-probability is taken from the teacher distribution brought back to temperature 1
    (`log_softmax(temperature * log p)`: exactly the teacher's own for one teacher; for an ensemble, its combination
    at the loss temperature, re-tempered); a target outside the compared vocabulary scores 0.
    The CE is label-smoothed by `spec.label_smoothing`.
    """
    if spec.alpha > 0.0:
        ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=spec.label_smoothing)
    else:
        with torch.no_grad():
            ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=spec.label_smoothing)
    if teacher is None:
        return ce, None, None, None
    scored = None
    if isinstance(teacher, TopKTeacher):
        log_s, log_t = sparse_log_probs(logits, teacher, spec.temperature)
        teacher_top1 = teacher.ids[:, 0]
    else:
        log_s, log_t = soften(logits[:, :kd_vocab], spec.temperature), teacher
        teacher_top1 = teacher.argmax(-1)
        if score_targets:
            with torch.no_grad():
                at_one = teacher if spec.temperature == 1.0 else F.log_softmax(teacher * spec.temperature, dim=-1)
                inside = targets < kd_vocab
                scored = at_one.gather(-1, targets.clamp(max=kd_vocab - 1)[:, None])[:, 0].where(inside, 0.0)
    kd = tempered_divergence(log_s, log_t, spec)
    with torch.no_grad():
        agree = (logits[:, :kd_vocab].argmax(-1) == teacher_top1).float()
    return ce, kd, agree, scored


def dense_distillation_terms(
    student_logits: torch.Tensor,
    teacher: TeacherLogits | TopKTeacher | CrossVocabTeacher | None,
    labels: torch.Tensor,
    spec: DivergenceSpec,
    reduction: str = "sum",
    score_targets: bool = False,
) -> DistillationTerms:
    """`alpha * CE + (1 - alpha) * T**2 * D` of full student logits `(B, L, V)` against a live teacher's logits
    (one model or an ensemble), a cached top-k, a teacher with another tokenizer (`CrossVocabTeacher`: D per
    aligned span, `span_divergence`), or no teacher (CE only), at the positions whose label is not `IGNORE_INDEX`;
    with the autograd of the logits, in float32. `score_targets` also returns the teacher's log-probability of each
    target (`position_terms`; 0 with a teacher of another vocabulary)."""
    check_labels(labels, student_logits)
    if teacher is not None:
        teacher.check(labels, student_logits.shape[-1])
    mask = labels != IGNORE_INDEX
    logits = student_logits[mask].float()
    kd_vocab = logits.shape[-1]
    rows = None
    if isinstance(teacher, CrossVocabTeacher):
        ce, _, _, _ = position_terms(logits, labels[mask], None, spec, kd_vocab)
        kd, agree = span_divergence(student_logits, labels, teacher, spec)
        loss = reduce(mix(ce, kd, spec.alpha), mask, reduction)
        return DistillationTerms(loss, ce.detach(), kd.detach(), agree, mask, torch.zeros_like(agree))
    if isinstance(teacher, TopKTeacher):
        rows = teacher.rows(mask)
    elif teacher is not None:
        kd_vocab = min(kd_vocab, *(t.shape[-1] for t in teacher.logits))
        with torch.no_grad():
            members = (t[mask] for t in teacher.logits)
            rows = softened_teacher(members, teacher.weights, teacher.mode, spec.temperature, kd_vocab)
    ce, kd, agree, scored = position_terms(logits, labels[mask], rows, spec, kd_vocab, score_targets)
    if kd is None:
        kd = agree = torch.zeros_like(ce)
    loss = reduce(mix(ce, kd, spec.alpha), mask, reduction)
    scored = torch.zeros_like(agree) if scored is None else scored
    return DistillationTerms(loss, ce.detach(), kd.detach(), agree, mask, scored)
