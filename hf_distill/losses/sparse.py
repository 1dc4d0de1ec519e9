"""Sparse teachers: only the top-k of each teacher distribution is known (a teacher cache's rows)."""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .divergences import (
    IGNORE_INDEX,
    LOG_FLOOR,
    DivergenceSpec,
    check_labels,
    check_reduction,
    reduce,
    tempered_divergence,
)

SPARSE_MODES = ("renormalized", "tail_bucket", "teacher_renormalized")


def check_sparse_mode(mode: str, loss_type: str) -> None:
    """`teacher_renormalized` compares a distribution with log-probabilities that do not sum to 1 over the K ids:
    defined as forward KL only (the cross-entropy form DistillKit and axolotl use)."""
    if mode not in SPARSE_MODES:
        raise ValueError(f"mode={mode!r} is not supported; choose one of {', '.join(SPARSE_MODES)}")
    if mode == "teacher_renormalized" and loss_type != "forward_kl":
        raise ValueError(
            f"teacher_cache_mode='teacher_renormalized' is defined for loss_type='forward_kl' only, got "
            f"loss_type={loss_type!r}"
        )


class TopKTeacher(NamedTuple):
    """A teacher known only by its top-k at each of the `(B, L)` positions of the labels.

    `ids` `(B, L, K)`: integer ids of its K most likely tokens, distinct within a position, most likely first;
    `logprobs` `(B, L, K)`: their log-probabilities at temperature 1; `tail` `(B, L)`: the log of the mass outside the
    top-k (`-inf` when none), needed by mode `"tail_bucket"` only; `mode`: how the top-k becomes a distribution
    (see `sparse_distillation_loss`).
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor | None = None
    mode: str = "renormalized"

    def check(self, labels: torch.Tensor, student_vocab: int) -> None:
        """Raise a one-line ValueError if the top-k does not fit `labels` and a student of `student_vocab` logits."""
        check_sparse_mode(self.mode, "forward_kl")
        if self.ids.shape != self.logprobs.shape or self.ids.shape[:-1] != labels.shape:
            raise ValueError(
                f"topk_ids {tuple(self.ids.shape)} and topk_logprobs {tuple(self.logprobs.shape)} must both be "
                f"labels {tuple(labels.shape)} plus a top-k dimension"
            )
        if self.ids.shape[-1] > student_vocab:
            raise ValueError(f"top-k of {self.ids.shape[-1]} exceeds the student's {student_vocab} logits")
        if self.mode == "tail_bucket" and (self.tail is None or self.tail.shape != labels.shape):
            shape = None if self.tail is None else tuple(self.tail.shape)
            raise ValueError(f"mode='tail_bucket' needs tail_logprob of shape {tuple(labels.shape)}, got {shape}")

    def rows(self, index: torch.Tensor | slice) -> "TopKTeacher":
        """The teacher at the positions `index` selects (a `(B, L)` mask, or a slice of already selected rows)."""
        tail = self.tail[index] if self.mode == "tail_bucket" else None
        return TopKTeacher(self.ids[index].long(), self.logprobs[index].float(), tail, self.mode)


def sparse_log_probs(
    student_logits: torch.Tensor, teacher: TopKTeacher, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities `(N, K)` (renormalized) or `(N, K + 1)` (tail_bucket, tail last) of
    `(N, V)` student logits and a teacher's `(N, K)` rows, softened by `temperature`."""
    ids, logprobs = teacher.ids, teacher.logprobs.float()
    if teacher.mode == "teacher_renormalized":
        log_s = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, ids)
        return log_s, F.log_softmax(logprobs / temperature, dim=-1)
    if teacher.mode == "renormalized":
        log_s = F.log_softmax(student_logits.float().gather(-1, ids) / temperature, dim=-1)
        return log_s, F.log_softmax(logprobs / temperature, dim=-1)
    full = F.log_softmax(student_logits.float() / temperature, dim=-1)
    # The floor, not -inf, keeps logsumexp's backward finite when the top-k covers the whole vocabulary.
    outside = full.scatter(-1, ids, LOG_FLOOR)
    log_s = torch.cat([full.gather(-1, ids), torch.logsumexp(outside, dim=-1, keepdim=True)], dim=-1)
    log_t = torch.cat([logprobs, teacher.tail.float().unsqueeze(-1)], dim=-1)
    return log_s, F.log_softmax(log_t / temperature, dim=-1)


def sparse_distillation_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    labels: torch.Tensor,
    *,
    tail_logprob: torch.Tensor | None = None,
    mode: str = "renormalized",
    loss_type: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    reduction: str = "sum",
) -> torch.Tensor:
    """`distillation_loss` against a teacher known only by its top-k: `divergence` on a K- or (K+1)-point
    distribution, times `temperature**2`.

    Args:
        student_logits: `(B, L, V)`.
        topk_ids: `(B, L, K)` integer ids of the teacher's K most likely tokens, distinct within a position.
        topk_logprobs: `(B, L, K)` the teacher's log-probabilities of those tokens at temperature 1.
        labels: `(B, L)`; `-100` marks ignored positions.
        tail_logprob: `(B, L)` log of the teacher's mass outside the top-k at temperature 1 (`-inf` when none);
            needed by `mode="tail_bucket"`, unused by `"renormalized"`.
        mode: `"renormalized"`: both distributions restricted to the K ids and renormalised, the teacher's as
            `softmax(topk_logprobs / T)`, the student's as `softmax(student_logits / T)` over the K ids.
            `"tail_bucket"`: K + 1 points, the K ids plus one bucket for every other token. The student's bucket is
            its exact tempered mass outside the top-k (a logsumexp over those logits); the teacher's per-token tail
            is unknown, so its bucket is tempered as one pseudo-token of log-probability `tail_logprob`, i.e.
            `p_T ∝ exp([topk_logprobs, tail_logprob] / T)`. At T = 1 that is exact; at T > 1 it under-states the
            teacher's tempered tail (sum_j p_j**(1/T) >= (sum_j p_j)**(1/T)), at T < 1 it over-states it.
            `"teacher_renormalized"`: the teacher's top-k renormalised, against the student's full-vocabulary
            log-probabilities at those K ids (not renormalised): `sum_k p_T,k (log p_T,k - log q_S,k)`, which is
            `renormalized`'s value minus `log` of the student's tempered top-k mass. DistillKit's objective, and
            axolotl's without `kd_normalize_topk`. Defined for `loss_type="forward_kl"` only.
        loss_type, temperature, beta, skew_lambda, reduction: as in `distillation_loss`.

    Every `loss_type` is supported in the first two modes: each divergence is defined for any pair of distributions
    on the same finite set of points, and both modes compare two such distributions. Renormalised mode gives no
    gradient to the student's mass outside the top-k (only its shape over the K ids is trained); tail_bucket and
    teacher_renormalized modes do. With K = V all three modes equal `distillation_loss`.
    """
    spec = DivergenceSpec(loss_type, temperature, beta, skew_lambda)
    check_reduction(reduction)
    check_labels(labels, student_logits)
    check_sparse_mode(mode, loss_type)
    teacher = TopKTeacher(topk_ids, topk_logprobs, tail_logprob, mode)
    teacher.check(labels, student_logits.shape[-1])
    mask = labels != IGNORE_INDEX
    log_s, log_t = sparse_log_probs(student_logits[mask], teacher.rows(mask), temperature)
    return reduce(tempered_divergence(log_s, log_t, spec), mask, reduction)
