"""Dense divergences between two distributions, cross-entropy, and the options that pick a divergence."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

LOSS_TYPES = ("forward_kl", "reverse_kl", "jsd", "gjsd", "skew_forward_kl", "skew_reverse_kl", "tvd")
# The loss types that read `beta`; any other ignores it.
BETA_LOSS_TYPES = ("jsd", "gjsd")
DEFAULT_BETA = 0.5
REDUCTIONS = ("sum", "mean", "none")

# A log-probability of -inf (a masked vocabulary entry, or an underflowed softmax) would turn p * log(p / q) into
# inf or NaN; this floor keeps every term finite while staying far below any log-probability float32 can express.
LOG_FLOOR = -1e30


@dataclass(frozen=True)
class DivergenceSpec:
    """Which divergence and how it is mixed with the CE: `alpha * CE + (1 - alpha) * temperature**2 * D`.

    `loss_type` picks D (see `distillation_loss`); `beta` is the teacher weight of the `jsd` mixture, in (0, 1), or
    of the `gjsd` one, in [0, 1] (TRL's generalised JSD: 0 is forward KL, 1 reverse KL), and ignored by the others;
    `skew_lambda` the skew of the `skew_*` divergences, in [0, 1); `temperature` > 0 softens both distributions;
    `alpha` in [0, 1] weighs the CE; `label_smoothing` in [0, 1) smooths the CE's targets as
    `torch.nn.functional.cross_entropy(label_smoothing=...)` does (Trainer's `label_smoothing_factor`). Checked when
    built, with errors that name the field and its value.
    """

    loss_type: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    skew_lambda: float = 0.1
    alpha: float = 0.5
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not supported; choose one of {', '.join(LOSS_TYPES)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={self.temperature}")
        if self.loss_type == "jsd" and not 0 < self.beta < 1:
            raise ValueError(f"beta must be in (0, 1) for loss_type='jsd', got beta={self.beta}")
        if self.loss_type == "gjsd" and not 0 <= self.beta <= 1:
            raise ValueError(f"beta must be in [0, 1] for loss_type='gjsd', got beta={self.beta}")

        if not 0 <= self.skew_lambda < 1:
            raise ValueError(f"skew_lambda must be in [0, 1), got skew_lambda={self.skew_lambda}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got alpha={self.alpha}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"label_smoothing must be in [0, 1), got label_smoothing={self.label_smoothing} (Trainer's "
                "label_smoothing_factor)"
            )


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; choose one of {', '.join(REDUCTIONS)}")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities; entries with p == 0 contribute exactly 0."""
    p = log_p.exp()
    support = p > 0
    # Substituting 0 where p == 0 keeps both the forward value and the backward pass free of 0 * inf.
    safe_log_p = torch.where(support, log_p, torch.zeros_like(log_p))
    safe_log_q = torch.where(support, log_q.clamp(min=LOG_FLOOR), torch.zeros_like(log_q))
    return (p * (safe_log_p - safe_log_q)).sum(-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed in log space so tiny probabilities do not underflow."""
    if weight_a <= 0:
        return log_b
    # The floor keeps logsumexp's backward finite where both entries are -inf (it would compute -inf - -inf).
    stacked = torch.stack(
        [log_a.clamp(min=LOG_FLOOR) + math.log(weight_a), log_b.clamp(min=LOG_FLOOR) + math.log1p(-weight_a)]
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

    No temperature and no T**2 factor: this is the bare divergence, shared by the dense, sparse and fused paths.
    """
    log_s, log_t = student_log_probs, teacher_log_probs
    if loss_type == "forward_kl":
        return _kl(log_t, log_s)
    if loss_type == "reverse_kl":
        return _kl(log_s, log_t)
    if loss_type == "gjsd" and beta in (0, 1):
        # TRL's endpoints: the mixture's limits would give 0, generalised JSD takes the KL on that side instead.
        return _kl(log_t, log_s) if beta == 0 else _kl(log_s, log_t)
    if loss_type in BETA_LOSS_TYPES:
        log_m = _log_mixture(log_t, log_s, beta)
        return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    if loss_type == "skew_forward_kl":
        return _kl(log_t, _log_mixture(log_t, log_s, skew_lambda))
    if loss_type == "skew_reverse_kl":
        return _kl(log_s, _log_mixture(log_s, log_t, skew_lambda))
    if loss_type == "tvd":
        return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)
    raise ValueError(f"loss_type={loss_type!r} is not supported; choose one of {', '.join(LOSS_TYPES)}")


def tempered_divergence(log_s: torch.Tensor, log_t: torch.Tensor, spec: DivergenceSpec) -> torch.Tensor:
    """`spec`'s divergence of two distributions already softened by its temperature, times `temperature**2`."""
    values = divergence(log_s, log_t, loss_type=spec.loss_type, beta=spec.beta, skew_lambda=spec.skew_lambda)
    return values * spec.temperature**2


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`log_softmax(logits / temperature)`; dividing by 1.0 is exact, so it is skipped without changing a bit."""
    return F.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)


def mix(ce: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """`alpha * ce + (1 - alpha) * kd`."""
    # Dropping a zero-weight term, rather than multiplying it by 0, keeps an inf in that term from becoming NaN.
    if alpha == 1.0:
        return ce
    if alpha == 0.0:
        return kd
    return alpha * ce + (1.0 - alpha) * kd


def reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
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
    with m = beta * p_T + (1 - beta) * p_S; `gjsd` the same for beta in (0, 1), forward KL at beta = 0 and reverse KL
    at beta = 1 (TRL's `generalized_jsd_loss` times `temperature**2`); `skew_forward_kl`
    KL(p_T || l * p_T + (1 - l) * p_S) and `skew_reverse_kl` KL(p_S || l * p_S + (1 - l) * p_T) with l = `skew_lambda`;
    `tvd` 0.5 * sum |p_T - p_S|.
    """
    spec = DivergenceSpec(loss_type, temperature, beta, skew_lambda)
    check_reduction(reduction)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape"
        )
    check_labels(labels, student_logits)
    mask = labels != IGNORE_INDEX
    # Only valid positions are softened: padding and prompt tokens cost no softmax at all.
    log_s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    return reduce(tempered_divergence(log_s, log_t, spec), mask, reduction)


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of `logits` (B, L, V) against `labels` (B, L), in float32, with the package's conventions."""
    check_reduction(reduction)
    mask = labels != IGNORE_INDEX
    values = F.cross_entropy(logits[mask].float(), labels[mask], reduction="none")
    return reduce(values, mask, reduction)


def check_labels(labels: torch.Tensor, logits: torch.Tensor) -> None:
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits {tuple(logits.shape[:-1])}")
