"""Distillation losses: plain functions of tensors, independent of any trainer.

Conventions shared by every function here:

- logits are `(B, L, V)` and labels `(B, L)`, already aligned position by position (the causal shift is the
  caller's job); a label of `-100` marks a position that does not count;
- the maths runs in float32 whatever the input dtype;
- `reduction="sum"` sums over valid positions, `"mean"` divides that sum by the number of valid positions (0.0 when
  there are none), `"none"` returns the `(B, L)` per-position values with 0 at ignored positions.
"""

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

LOSS_TYPES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")
REDUCTIONS = ("sum", "mean", "none")

# A log-probability of -inf (a masked vocabulary entry, or an underflowed softmax) would turn p * log(p / q) into
# inf or NaN; this floor keeps every term finite while staying far below any log-probability float32 can express.
_LOG_FLOOR = -1e30


def _check_options(loss_type: str, reduction: str, beta: float, skew_lambda: float, temperature: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not supported; choose one of {', '.join(LOSS_TYPES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; choose one of {', '.join(REDUCTIONS)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got temperature={temperature}")
    if loss_type == "jsd" and not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1) for loss_type='jsd', got beta={beta}")
    if loss_type.startswith("skew") and not 0 <= skew_lambda < 1:
        raise ValueError(f"skew_lambda must be in [0, 1), got skew_lambda={skew_lambda}")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities; entries with p == 0 contribute exactly 0."""
    p = log_p.exp()
    support = p > 0
    # Substituting 0 where p == 0 keeps both the forward value and the backward pass free of 0 * inf.
    safe_log_p = torch.where(support, log_p, torch.zeros_like(log_p))
    safe_log_q = torch.where(support, log_q.clamp(min=_LOG_FLOOR), torch.zeros_like(log_q))
    return (p * (safe_log_p - safe_log_q)).sum(-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed in log space so tiny probabilities do not underflow."""
    if weight_a <= 0:
        return log_b
    # The floor keeps logsumexp's backward finite where both entries are -inf (it would compute -inf - -inf).
    stacked = torch.stack(
        [log_a.clamp(min=_LOG_FLOOR) + math.log(weight_a), log_b.clamp(min=_LOG_FLOOR) + math.log1p(-weight_a)]
    )
    return torch.logsumexp(stacked, dim=0)


def divergence(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    *,
    loss_type: str = "forward_kl",
    beta: float = 0.5,
    skew_lambda: float = 0.1,
) -> torch.Tensor:
    """Divergence between two distributions given as log-probabilities `(..., V)`; returns `(...)`.

    No temperature and no T**2 factor: this is the bare divergence, shared by the dense and the chunked paths.
    """
    log_s, log_t = student_log_probs, teacher_log_probs
    if loss_type == "forward_kl":
        return _kl(log_t, log_s)
    if loss_type == "reverse_kl":
        return _kl(log_s, log_t)
    if loss_type == "jsd":
        log_m = _log_mixture(log_t, log_s, beta)
        return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    if loss_type == "skew_forward_kl":
        return _kl(log_t, _log_mixture(log_t, log_s, skew_lambda))
    if loss_type == "skew_reverse_kl":
        return _kl(log_s, _log_mixture(log_s, log_t, skew_lambda))
    if loss_type == "tvd":
        return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)
    raise ValueError(f"loss_type={loss_type!r} is not supported; choose one of {', '.join(LOSS_TYPES)}")


def _reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-valid-position `values` (N,) gathered with `mask` (B, L)."""
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.sum() / mask.sum().clamp(min=1)
    full = values.new_zeros(mask.shape)
    return full.masked_scatter(mask, values)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_type: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    reduction: str = "sum",
) -> torch.Tensor:
    """Temperature-softened divergence between teacher and student, times `temperature**2`.

    `p_S = softmax(student_logits / T)`, `p_T = softmax(teacher_logits / T)`, and `loss_type` picks the divergence:
    `forward_kl` KL(p_T || p_S); `reverse_kl` KL(p_S || p_T); `jsd` beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)
    with m = beta * p_T + (1 - beta) * p_S; `skew_forward_kl` KL(p_T || l * p_T + (1 - l) * p_S) and
    `skew_reverse_kl` KL(p_S || l * p_S + (1 - l) * p_T) with l = `skew_lambda`; `tvd` 0.5 * sum |p_T - p_S|.
    """
    _check_options(loss_type, reduction, beta, skew_lambda, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape"
        )
    if student_logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits {tuple(student_logits.shape[:-1])}")
    mask = labels != IGNORE_INDEX
    # Only valid positions are softened: padding and prompt tokens cost no softmax at all.
    log_s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    values = divergence(log_s, log_t, loss_type=loss_type, beta=beta, skew_lambda=skew_lambda) * temperature**2
    return _reduce(values, mask, reduction)


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of `logits` (B, L, V) against `labels` (B, L), in float32, with the conventions above."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; choose one of {', '.join(REDUCTIONS)}")
    mask = labels != IGNORE_INDEX
    values = F.cross_entropy(logits[mask].float(), labels[mask], reduction="none")
    return _reduce(values, mask, reduction)


def teacher_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of valid positions where the student's and the teacher's top-1 tokens agree."""
    mask = labels != IGNORE_INDEX
    return (student_logits[mask].argmax(-1) == teacher_logits[mask].argmax(-1)).sum()
