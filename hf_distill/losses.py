"""Distillation losses: plain functions of tensors, independent of any trainer.

Conventions shared by every function here:

- logits are `(B, L, V)` and labels `(B, L)`, already aligned position by position (the causal shift is the
  caller's job); a label of `-100` marks a position that does not count;
- the maths runs in float32 whatever the input dtype;
- `reduction="sum"` sums over valid positions, `"mean"` divides that sum by the number of valid positions (0.0 when
  there are none), `"none"` returns the `(B, L)` per-position values with 0 at ignored positions.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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


def teacher_agreement(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Number of valid positions where the student's and the teacher's top-1 tokens agree."""
    mask = labels != IGNORE_INDEX
    return (student_logits[mask].argmax(-1) == teacher_logits[mask].argmax(-1)).sum()


# ---- sparse teachers: only the top-k of each teacher distribution is known ----

SPARSE_MODES = ("renormalized", "tail_bucket")


class TopKTeacher(NamedTuple):
    """A teacher known only by its top-k at each of the `(B, L)` positions of `labels` (a teacher cache's rows).

    `ids` `(B, L, K)`: integer ids of its K most likely tokens, distinct within a position; `logprobs` `(B, L, K)`:
    their log-probabilities at temperature 1; `tail` `(B, L)`: the log of the mass outside the top-k (`-inf` when
    none), needed by mode `"tail_bucket"` only.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor | None = None


def _check_topk(teacher: TopKTeacher, labels: torch.Tensor, student_vocab: int, mode: str) -> None:
    if mode not in SPARSE_MODES:
        raise ValueError(f"mode={mode!r} is not supported; choose one of {', '.join(SPARSE_MODES)}")
    ids, logprobs, tail = teacher
    if ids.shape != logprobs.shape or ids.shape[:-1] != labels.shape:
        raise ValueError(
            f"topk_ids {tuple(ids.shape)} and topk_logprobs {tuple(logprobs.shape)} must both be labels "
            f"{tuple(labels.shape)} plus a top-k dimension"
        )
    if ids.shape[-1] > student_vocab:
        raise ValueError(f"top-k of {ids.shape[-1]} exceeds the student's {student_vocab} logits")
    if mode == "tail_bucket" and (tail is None or tail.shape != labels.shape):
        shape = None if tail is None else tuple(tail.shape)
        raise ValueError(f"mode='tail_bucket' needs tail_logprob of shape {tuple(labels.shape)}, got {shape}")


def _sparse_log_probs(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor | None,
    mode: str,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities `(N, K)` (renormalized) or `(N, K + 1)` (tail_bucket, tail last)."""
    teacher = topk_logprobs.float()
    if mode == "renormalized":
        log_s = F.log_softmax(student_logits.float().gather(-1, topk_ids) / temperature, dim=-1)
        return log_s, F.log_softmax(teacher / temperature, dim=-1)
    full = F.log_softmax(student_logits.float() / temperature, dim=-1)
    # The floor, not -inf, keeps logsumexp's backward finite when the top-k covers the whole vocabulary.
    outside = full.scatter(-1, topk_ids, _LOG_FLOOR)
    log_s = torch.cat([full.gather(-1, topk_ids), torch.logsumexp(outside, dim=-1, keepdim=True)], dim=-1)
    log_t = torch.cat([teacher, tail_logprob.float().unsqueeze(-1)], dim=-1)
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
        loss_type, temperature, beta, skew_lambda, reduction: as in `distillation_loss`.

    Every `loss_type` is supported in both modes: each divergence is defined for any pair of distributions on the
    same finite set of points, and both modes compare two such distributions. Renormalised mode gives no gradient to
    the student's mass outside the top-k (only its shape over the K ids is trained); tail_bucket mode does. With K = V
    both modes equal `distillation_loss`.
    """
    _check_options(loss_type, reduction, beta, skew_lambda, temperature)
    if student_logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits {tuple(student_logits.shape[:-1])}")
    _check_topk(TopKTeacher(topk_ids, topk_logprobs, tail_logprob), labels, student_logits.shape[-1], mode)
    mask = labels != IGNORE_INDEX
    tail = tail_logprob[mask] if mode == "tail_bucket" else None
    log_s, log_t = _sparse_log_probs(
        student_logits[mask], topk_ids[mask].long(), topk_logprobs[mask], tail, mode, temperature
    )
    values = divergence(log_s, log_t, loss_type=loss_type, beta=beta, skew_lambda=skew_lambda) * temperature**2
    return _reduce(values, mask, reduction)


# ---- teacher ensembles: several teacher distributions combined into one ----

ENSEMBLE_MODES = ("mean_probs", "mean_logprobs")


def check_ensemble_mode(mode: str) -> None:
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"teacher_ensemble={mode!r} is not supported; choose one of {', '.join(ENSEMBLE_MODES)}")


def combine_log_probs(log_probs: Sequence[torch.Tensor], weights: Sequence[float], mode: str) -> torch.Tensor:
    """One distribution from the members' log-probabilities `(..., V)`, in log space.

    `mean_probs`: log(sum_i w_i p_i), the mixture. `mean_logprobs`: log_softmax(sum_i w_i log p_i), the
    renormalised weighted geometric mean. Members of weight 0 do not count.
    """
    check_ensemble_mode(mode)
    if mode == "mean_probs":
        terms = [lp + math.log(w) for lp, w in zip(log_probs, weights) if w > 0]
        return torch.logsumexp(torch.stack(terms), dim=0)
    # The floor keeps 0 * -inf (a zero weight on a masked entry) from becoming NaN.
    return F.log_softmax(sum(w * lp.clamp(min=_LOG_FLOOR) for lp, w in zip(log_probs, weights)), dim=-1)


# ---- fused linear + divergence: the (tokens x vocab) logits never exist in full ----


class TeacherHead(NamedTuple):
    """One teacher of `EnsembleTeacher`: final hidden states `(B, L, H)`, LM-head weight `(V, H)` and bias `(V,)`,
    logit scale and final-logit soft-cap, as `linear_distillation_loss_parts` takes them for a single teacher."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None


class EnsembleTeacher(NamedTuple):
    """Teachers combined per position after each is softened by the temperature (`combine_log_probs`)."""

    heads: Sequence[TeacherHead]
    weights: Sequence[float]
    mode: str = "mean_probs"


class LinearDistillationParts(NamedTuple):
    """What `linear_distillation_loss_parts` returns; every sum runs over the valid positions only.

    `loss` is `alpha * ce + (1 - alpha) * kd` and the only member with a gradient; `ce` (cross-entropy at
    temperature 1 on the full student vocabulary) and `kd` (divergence times `temperature**2`) are detached float32
    sums for logging; `n_valid` is the int64 number of positions whose label is not `IGNORE_INDEX`.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    n_valid: torch.Tensor


@dataclass(frozen=True)
class _LinearSpec:
    alpha: float
    loss_type: str
    temperature: float
    beta: float
    skew_lambda: float
    chunk_size: int
    student_logit_scale: float
    student_softcap: float | None
    kd_vocab: int
    # Per teacher head (one, or an ensemble's members): logit scale and soft-cap, and how their distributions combine.
    teacher_logit_scales: tuple[float, ...] = (1.0,)
    teacher_softcaps: tuple[float | None, ...] = (None,)
    ensemble_weights: tuple[float, ...] = (1.0,)
    ensemble_mode: str = "mean_probs"
    # None: the teacher is hidden states and LM heads. Otherwise a cached top-k (`TopKTeacher`) in this mode.
    sparse_mode: str | None = None


def _scale_and_cap(logits: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # Dividing by 1.0 is exact, so skipping it saves a pass over the chunk without changing a single bit.
    return F.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)


def _chunk_values_and_grad(
    hidden: torch.Tensor,
    s_weight: torch.Tensor,
    s_bias: torch.Tensor | None,
    teacher: torch.Tensor | tuple[torch.Tensor, ...] | None,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    spec: _LinearSpec,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """CE and divergence of one chunk of float32 student rows, and, with `with_grad`, the gradient of
    `sum(weights * (alpha * ce + (1 - alpha) * kd))` w.r.t. the chunk's raw logits `hidden @ s_weight.T + s_bias`.

    `teacher` is the chunk's softened teacher log-probabilities `(chunk, kd_vocab)`, or with `spec.sparse_mode` its
    cached `(topk_ids, topk_logprobs, tail_logprob)` rows, or None (no divergence).

    A function of its own so that every `(chunk, V)` intermediate is freed on return, before the caller's matmuls.
    """
    alpha, temperature = spec.alpha, spec.temperature
    raw = F.linear(hidden, s_weight, s_bias)
    with torch.enable_grad():
        # The raw logits are the leaf: everything after the matmul is differentiated here, and the matmul's own
        # backward is done by the caller, straight into the accumulated gradients.
        raw.requires_grad_(with_grad)
        logits = _scale_and_cap(raw, spec.student_logit_scale, spec.student_softcap)
        terms = []
        if alpha > 0.0:
            ce = F.cross_entropy(logits, targets, reduction="none")
            terms.append((alpha, ce))
        else:
            # alpha == 0 still reports the CE: with the chunk's logits at hand it costs one log-softmax.
            with torch.no_grad():
                ce = F.cross_entropy(logits, targets, reduction="none")
        kd = None
        if teacher is not None:
            if spec.sparse_mode is None:
                log_s, log_t = _soften(logits[:, : spec.kd_vocab], temperature), teacher
            else:
                log_s, log_t = _sparse_log_probs(logits, *teacher, spec.sparse_mode, temperature)
            kd = divergence(log_s, log_t, loss_type=spec.loss_type, beta=spec.beta, skew_lambda=spec.skew_lambda)
            kd = kd * temperature**2
            terms.append((1.0 - alpha, kd))
        if not with_grad:
            return ce, kd, None
        objective = sum(w * (v if weights is None else v * weights).sum() for w, v in terms)
        (grad_raw,) = torch.autograd.grad(objective, raw)
    return ce.detach(), None if kd is None else kd.detach(), grad_raw


def _teacher_log_probs(heads: list[tuple], rows: slice, spec: _LinearSpec) -> torch.Tensor:
    """Softened teacher log-probabilities `(chunk, kd_vocab)` of one chunk: one head's, or its heads' combination."""
    log_probs = []
    for (hidden, weight32, bias32), scale, softcap in zip(heads, spec.teacher_logit_scales, spec.teacher_softcaps):
        logits = _scale_and_cap(F.linear(hidden[rows].to(torch.float32), weight32, bias32), scale, softcap)
        log_probs.append(_soften(logits, spec.temperature))
        del logits
    if len(log_probs) == 1:
        return log_probs[0]
    return combine_log_probs(log_probs, spec.ensemble_weights, spec.ensemble_mode)


def _chunked_pass(
    s_hidden: torch.Tensor,
    s_weight: torch.Tensor,
    s_bias: torch.Tensor | None,
    teacher: tuple[torch.Tensor | None, ...],
    targets: torch.Tensor,
    spec: _LinearSpec,
    needs: tuple[bool, bool, bool],
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-position CE and divergence of the `(N, H)` valid rows, `spec.chunk_size` rows at a time.

    `teacher` holds `(hidden, weight, bias)` of each teacher head, hidden states per valid row, or with
    `spec.sparse_mode` the cached `(topk_ids, topk_logprobs, tail_logprob)` per valid row (tail None in renormalized
    mode), or `(None, None, None)`.

    With any of `needs` (hidden, weight, bias) set, also returns the float32 gradients of
    `sum(w * (alpha * ce + (1 - alpha) * kd))` with w = `grad_scale` (N,), or 1 when it is None.
    """
    f32 = torch.float32
    n = s_hidden.shape[0]
    with_grad = any(needs)
    # One float32 copy of each head (none when it already is float32): casting per chunk would redo it every chunk.
    s_weight32 = s_weight.to(f32)
    s_bias32 = None if s_bias is None else s_bias.to(f32)
    has_teacher = teacher[0] is not None
    dense_teacher = has_teacher and spec.sparse_mode is None
    if dense_teacher:
        heads = [
            (hidden, weight[: spec.kd_vocab].to(f32), None if bias is None else bias[: spec.kd_vocab].to(f32))
            for hidden, weight, bias in zip(teacher[::3], teacher[1::3], teacher[2::3])
        ]
    ce_values = torch.zeros(n, dtype=f32, device=s_hidden.device)
    kd_values = torch.zeros_like(ce_values)
    grad_hidden = s_hidden.new_empty(s_hidden.shape, dtype=f32) if needs[0] else None
    grad_weight = torch.zeros_like(s_weight32) if needs[1] else None
    grad_bias = torch.zeros_like(s_bias32) if needs[2] else None

    for start in range(0, n, spec.chunk_size):
        rows = slice(start, min(start + spec.chunk_size, n))
        chunk_teacher = None
        if dense_teacher:
            chunk_teacher = _teacher_log_probs(heads, rows, spec)
        elif has_teacher:
            chunk_teacher = tuple(None if t is None else t[rows] for t in teacher)
        hidden = s_hidden[rows].to(f32)
        weights = None if grad_scale is None else grad_scale[rows]
        ce, kd, grad_raw = _chunk_values_and_grad(
            hidden, s_weight32, s_bias32, chunk_teacher, targets[rows], weights, spec, with_grad
        )
        # Dropped as soon as possible, here and below, so that one chunk's buffers are alive at a time.
        del chunk_teacher
        ce_values[rows] = ce
        if kd is not None:
            kd_values[rows] = kd
        if grad_hidden is not None:
            torch.mm(grad_raw, s_weight32, out=grad_hidden[rows])
        if grad_weight is not None:
            grad_weight.addmm_(grad_raw.T, hidden)
        if grad_bias is not None:
            grad_bias += grad_raw.sum(0)
        del grad_raw
    return ce_values, kd_values, grad_hidden, grad_weight, grad_bias


def _mix(ce: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    # Dropping a zero-weight term, rather than multiplying it by 0, keeps an inf in that term from becoming NaN.
    if alpha == 1.0:
        return ce
    if alpha == 0.0:
        return kd
    return alpha * ce + (1.0 - alpha) * kd


class _FusedLinearDistillation(torch.autograd.Function):
    """Autograd wrapper of `_chunked_pass` over the valid rows.

    `per_position=False` (scalar sum) computes the gradients during the forward pass, so the chunk logits are made
    once, and only scales them by the incoming scalar in backward. `per_position=True` returns `(N,)` values whose
    incoming gradient differs per position, which cannot be folded into a precomputed weight gradient; its backward
    runs the chunks a second time with those weights.
    """

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, targets, spec, per_position, *teacher):
        needs = tuple(ctx.needs_input_grad[:3])
        ctx.spec, ctx.per_position, ctx.n_teacher = spec, per_position, len(teacher)
        ctx.dtypes = (s_hidden.dtype, s_weight.dtype, None if s_bias is None else s_bias.dtype)
        if per_position:
            ce, kd, *_ = _chunked_pass(s_hidden, s_weight, s_bias, teacher, targets, spec, (False,) * 3)
            ctx.save_for_backward(s_hidden, s_weight, s_bias, targets, *teacher)
            # With alpha 0 or 1 the mix is `kd` or `ce` itself, which must not be both differentiable and not.
            out = _mix(ce, kd, spec.alpha).clone()
        else:
            ce, kd, *grads = _chunked_pass(s_hidden, s_weight, s_bias, teacher, targets, spec, needs)
            ctx.save_for_backward(*grads)
            ctx.consumed = False
            out = _mix(ce.sum(), kd.sum(), spec.alpha)
        ctx.mark_non_differentiable(ce, kd)
        return out, ce, kd

    @staticmethod
    def backward(ctx, grad_out, _grad_ce, _grad_kd):
        if ctx.per_position:
            s_hidden, s_weight, s_bias, targets, *teacher = ctx.saved_tensors
            needs = tuple(ctx.needs_input_grad[:3])
            _, _, *grads = _chunked_pass(
                s_hidden, s_weight, s_bias, teacher, targets, ctx.spec, needs, grad_out.float()
            )
        else:
            if ctx.consumed:
                raise RuntimeError(
                    "linear_distillation_loss scales its precomputed gradients in place, so it cannot be "
                    "backpropagated twice (retain_graph=True); compute the loss again instead"
                )
            ctx.consumed = True
            grads = list(ctx.saved_tensors)
            # The forward pass computed d(loss)/d(input) for an upstream gradient of 1; the chain rule scales it.
            if not torch.equal(grad_out, torch.ones_like(grad_out)):
                grads = [None if g is None else g.mul_(grad_out.float()) for g in grads]
        grads = [None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        # No gradient for targets, spec, per_position and the teacher's tensors.
        return (*grads, None, None, None, *[None] * ctx.n_teacher)


def _check_linear_args(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    student_softcap: float | None,
    labels: torch.Tensor,
    alpha: float,
    chunk_size: int,
    ensemble: EnsembleTeacher | None,
    teacher_topk: TopKTeacher | None,
    sparse_mode: str,
) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got alpha={alpha}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must hold integer token ids, got labels.dtype={labels.dtype}")
    heads = [("student", TeacherHead(student_hidden, student_weight, student_bias, softcap=student_softcap))]
    if teacher_topk is not None and ensemble is not None:
        raise ValueError("give the teacher as teacher_hidden and teacher_weight, or as teacher_topk, not both")
    if alpha < 1.0 and teacher_topk is not None:
        _check_topk(teacher_topk, labels, student_weight.shape[0], sparse_mode)
    elif alpha < 1.0:
        if ensemble is None:
            raise ValueError(
                f"alpha={alpha} < 1 needs teacher_hidden and teacher_weight, or teacher_topk (only alpha=1.0 skips "
                "them)"
            )
        check_ensemble_mode(ensemble.mode)
        if len(ensemble.weights) != len(ensemble.heads) or not ensemble.heads:
            raise ValueError(
                f"teacher_ensemble has {len(ensemble.heads)} heads and {len(ensemble.weights)} weights; give one "
                "weight per head"
            )
        names = ["teacher"] if len(ensemble.heads) == 1 else [f"teacher {i}" for i in range(len(ensemble.heads))]
        heads += zip(names, ensemble.heads)
    for name, head in heads:
        hidden, weight, bias = head.hidden, head.weight, head.bias
        if hidden.dim() < 2 or hidden.shape[:-1] != labels.shape:
            raise ValueError(
                f"{name}_hidden {tuple(hidden.shape)} must be labels {tuple(labels.shape)} plus a hidden dimension"
            )
        if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
            raise ValueError(
                f"{name}_weight {tuple(weight.shape)} must be (vocab, {hidden.shape[-1]}) to match {name}_hidden "
                f"{tuple(hidden.shape)}"
            )
        if bias is not None and bias.shape != weight.shape[:1]:
            raise ValueError(f"{name}_bias {tuple(bias.shape)} must be ({weight.shape[0]},) to match {name}_weight")
        if head.softcap is not None and not head.softcap > 0:
            raise ValueError(f"{name}_softcap must be > 0 or None, got {name}_softcap={head.softcap}")


def _linear_distillation(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    student_bias: torch.Tensor | None,
    teacher_bias: torch.Tensor | None,
    alpha: float,
    loss_type: str,
    temperature: float,
    beta: float,
    skew_lambda: float,
    chunk_size: int,
    reduction: str,
    student_logit_scale: float,
    teacher_logit_scale: float,
    student_softcap: float | None,
    teacher_softcap: float | None,
    teacher_topk: TopKTeacher | None,
    sparse_mode: str,
    teacher_ensemble: EnsembleTeacher | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns the mixed loss (scalar sum, or `(N,)` for `reduction="none"`), the per-valid-position CE and
    divergence `(N,)` (detached) and the `(B, L)` mask of valid positions."""
    _check_options(loss_type, reduction, beta, skew_lambda, temperature)
    # One teacher is an ensemble of one: a single code path projects and softens every teacher head.
    ensemble = teacher_ensemble
    if teacher_hidden is not None and teacher_weight is not None:
        if ensemble is not None:
            raise ValueError("give the teacher as teacher_hidden and teacher_weight, or as teacher_ensemble, not both")
        head = TeacherHead(teacher_hidden, teacher_weight, teacher_bias, teacher_logit_scale, teacher_softcap)
        ensemble = EnsembleTeacher([head], [1.0])
    _check_linear_args(
        student_hidden,
        student_weight,
        student_bias,
        student_softcap,
        labels,
        alpha,
        chunk_size,
        ensemble,
        teacher_topk,
        sparse_mode,
    )
    with_kd = alpha < 1.0
    sparse = with_kd and teacher_topk is not None
    heads = ensemble.heads if with_kd and not sparse else []
    spec = _LinearSpec(
        alpha=alpha,
        loss_type=loss_type,
        temperature=temperature,
        beta=beta,
        skew_lambda=skew_lambda,
        chunk_size=chunk_size,
        student_logit_scale=student_logit_scale,
        student_softcap=student_softcap,
        kd_vocab=min([student_weight.shape[0], *(head.weight.shape[0] for head in heads)]),
        teacher_logit_scales=tuple(head.logit_scale for head in heads),
        teacher_softcaps=tuple(head.softcap for head in heads),
        ensemble_weights=tuple(ensemble.weights) if heads else (),
        ensemble_mode=ensemble.mode if heads else "mean_probs",
        sparse_mode=sparse_mode if sparse else None,
    )
    per_position = reduction == "none"
    mask = labels != IGNORE_INDEX
    targets = labels[mask]
    student = (student_hidden[mask], student_weight, student_bias)
    # The teacher only supplies targets: it gets no gradient, and alpha=1.0 never touches it.
    teacher = (None, None, None)
    if sparse:
        ids, logprobs, tail = teacher_topk
        tail = tail[mask] if sparse_mode == "tail_bucket" else None
        teacher = (ids[mask].long(), logprobs[mask].float(), tail)
    elif heads:
        teacher = tuple(
            t
            for head in heads
            for t in (
                head.hidden.detach()[mask],
                head.weight.detach(),
                None if head.bias is None else head.bias.detach(),
            )
        )
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in student):
        out, ce, kd = _FusedLinearDistillation.apply(*student, targets, spec, per_position, *teacher)
    else:
        ce, kd, *_ = _chunked_pass(*student, teacher, targets, spec, (False,) * 3)
        out = _mix(ce, kd, alpha) if per_position else _mix(ce.sum(), kd.sum(), alpha)
    return out, ce, kd, mask


def linear_distillation_loss_parts(
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
    chunk_size: int = 1024,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    teacher_topk: TopKTeacher | None = None,
    sparse_mode: str = "renormalized",
    teacher_ensemble: EnsembleTeacher | None = None,
) -> LinearDistillationParts:
    """`alpha * CE + (1 - alpha) * T**2 * D` summed over valid positions, from hidden states and LM-head weights.

    Same value and gradients as projecting to full logits and calling `cross_entropy_loss` and `distillation_loss`
    with `reduction="sum"`, but only `chunk_size` valid positions are projected at a time and their gradients are
    computed and accumulated right away, so the `(tokens, vocab)` logits never exist in full.

    Args:
        student_hidden / teacher_hidden: final hidden states `(B, L, H_s)` / `(B, L, H_t)`; the widths may differ.
        student_weight / teacher_weight: LM-head weights `(V_s, H_s)` / `(V_t, H_t)`. The divergence uses the first
            `min(V_s, V_t)` vocabulary entries (the models may pad their vocabularies differently), the CE all `V_s`.
        labels: `(B, L)` targets aligned with the positions (already shifted); `-100` marks ignored positions.
        student_bias / teacher_bias: optional LM-head biases `(V_s,)` / `(V_t,)`.
        alpha: weight of the CE, in [0, 1]. With `alpha=1.0` the teacher is never used and may be None, and `kd` is
            0. With `alpha=0.0` the CE gets no gradient but is still reported, computed under no_grad from the chunk
            logits that the divergence needs anyway (one extra log-softmax per chunk).
        loss_type, temperature, beta, skew_lambda: as in `distillation_loss`.
        chunk_size: number of valid positions projected at once, >= 1. The peak memory holds about ten float32
            `(chunk_size, V)` buffers on top of a float32 copy of the student head's gradient.
        student_logit_scale / teacher_logit_scale: logits are `(hidden @ weight.T + bias) * logit_scale`.
        student_softcap / teacher_softcap: when not None, logits become `softcap * tanh(logits / softcap)`
            (Gemma-2 final-logit soft-capping), applied after the scale.
        teacher_topk / sparse_mode: a teacher known only by its top-k (a `TopKTeacher`, e.g. from a teacher cache),
            given instead of `teacher_hidden` and `teacher_weight`: the divergence is then that of
            `sparse_distillation_loss` with `mode=sparse_mode`, chunk by chunk like the rest.
        teacher_ensemble: several teachers (an `EnsembleTeacher` of `TeacherHead`s), given instead of the `teacher_*`
            tensors: each head's chunk is projected and softened by `temperature`, and the chunk's teacher
            distribution is their combination (`combine_log_probs`), as `hf_distill.ensemble.TeacherEnsemble` forms it
            from full logits. The divergence uses the vocabulary entries all heads and the student have.

    Returns `LinearDistillationParts(loss, ce, kd, n_valid)`. Only `loss` carries gradients (to the student's hidden
    states, weight and bias, returned in their dtypes; the maths runs in float32). A trainer divides `loss` by its
    token count and logs `ce` and `kd` divided by the same count. The gradients are computed during the forward pass
    and scaled by the upstream gradient in backward, so the loss can be backpropagated once only.
    """
    loss, ce, kd, mask = _linear_distillation(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        student_bias=student_bias,
        teacher_bias=teacher_bias,
        alpha=alpha,
        loss_type=loss_type,
        temperature=temperature,
        beta=beta,
        skew_lambda=skew_lambda,
        chunk_size=chunk_size,
        reduction="sum",
        student_logit_scale=student_logit_scale,
        teacher_logit_scale=teacher_logit_scale,
        student_softcap=student_softcap,
        teacher_softcap=teacher_softcap,
        teacher_topk=teacher_topk,
        sparse_mode=sparse_mode,
        teacher_ensemble=teacher_ensemble,
    )
    return LinearDistillationParts(loss, ce.sum(), kd.sum(), mask.sum())


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
    chunk_size: int = 1024,
    reduction: str = "sum",
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    teacher_topk: TopKTeacher | None = None,
    sparse_mode: str = "renormalized",
    teacher_ensemble: EnsembleTeacher | None = None,
) -> torch.Tensor:
    """`alpha * cross_entropy_loss + (1 - alpha) * distillation_loss` of the logits `hidden @ weight.T`, chunked.

    The arguments are those of `linear_distillation_loss_parts`, plus `reduction` with the module's conventions.
    `"sum"` and `"mean"` compute the gradients during the forward pass (one projection per chunk); `"none"` returns
    `(B, L)` values and, since each position then gets its own upstream gradient, projects every chunk again in
    backward.
    """
    loss, _, _, mask = _linear_distillation(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        student_bias=student_bias,
        teacher_bias=teacher_bias,
        alpha=alpha,
        loss_type=loss_type,
        temperature=temperature,
        beta=beta,
        skew_lambda=skew_lambda,
        chunk_size=chunk_size,
        reduction=reduction,
        student_logit_scale=student_logit_scale,
        teacher_logit_scale=teacher_logit_scale,
        student_softcap=student_softcap,
        teacher_softcap=teacher_softcap,
        teacher_topk=teacher_topk,
        sparse_mode=sparse_mode,
        teacher_ensemble=teacher_ensemble,
    )
    if reduction == "none":
        return _reduce(loss, mask, "none")
    if reduction == "mean":
        return loss / mask.sum().clamp(min=1)
    return loss
