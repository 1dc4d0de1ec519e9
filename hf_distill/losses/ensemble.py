"""Teacher ensembles: several teacher distributions combined into one, position by position."""

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from .divergences import LOG_FLOOR, soften

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
    return F.log_softmax(sum(w * lp.clamp(min=LOG_FLOOR) for lp, w in zip(log_probs, weights)), dim=-1)


def softened_teacher(
    member_logits: Iterable[torch.Tensor], weights: Sequence[float], mode: str, temperature: float, vocab: int
) -> torch.Tensor:
    """The teacher distribution `(..., vocab)` softened by `temperature`, as log-probabilities: one member's, or the
    combination of the members', each cut to `vocab` logits and softened before they are combined.

    `member_logits` may be a generator: each member's logits are then dropped as soon as they are softened."""
    log_probs = [soften(logits[..., :vocab].float(), temperature) for logits in member_logits]
    if len(log_probs) == 1:
        return log_probs[0]
    return combine_log_probs(log_probs, weights, mode)
