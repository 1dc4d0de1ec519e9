"""What the losses read a model's predictions from: an LM head over final hidden states, and the live teachers
(one model or an ensemble) as heads (fused path) or as logits (dense path). A cached teacher is a `TopKTeacher`."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .ensemble import check_ensemble_mode


@dataclass(frozen=True)
class LMHead:
    """What turns final hidden states into logits: `softcap * tanh((h @ weight.T + bias) * logit_scale / softcap)`,
    the soft-cap (Gemma-2 final-logit soft-capping) only when `softcap` is not None."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def to(self, dtype: torch.dtype, vocab: int | None = None) -> "LMHead":
        """This head with weight and bias in `dtype` (no copy when they already are), cut to `vocab` rows."""
        rows = slice(None) if vocab is None else slice(None, vocab)
        bias = None if self.bias is None else self.bias[rows].to(dtype)
        return LMHead(self.weight[rows].to(dtype), bias, self.logit_scale, self.softcap)

    def detach(self) -> "LMHead":
        bias = None if self.bias is None else self.bias.detach()
        return LMHead(self.weight.detach(), bias, self.logit_scale, self.softcap)

    def post_process(self, raw: torch.Tensor) -> torch.Tensor:
        """Logit scale and soft-cap applied to the raw projection `hidden @ weight.T + bias`."""
        if self.logit_scale != 1.0:
            raw = raw * self.logit_scale
        if self.softcap is not None:
            raw = torch.tanh(raw / self.softcap) * self.softcap
        return raw

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.post_process(F.linear(hidden, self.weight, self.bias))

    def check(self, name: str, hidden: torch.Tensor, labels: torch.Tensor) -> None:
        """One-line errors, naming `name`'s tensors, when `hidden` and this head do not fit `labels`."""
        weight, bias = self.weight, self.bias
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
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"{name}_softcap must be > 0 or None, got {name}_softcap={self.softcap}")


def _check_members(n_tensors: int, weights: Sequence[float], mode: str) -> None:
    check_ensemble_mode(mode)
    if not n_tensors or len(weights) != n_tensors:
        raise ValueError(f"teacher_ensemble has {n_tensors} teachers and {len(weights)} weights; give one per teacher")


class TeacherHeads(NamedTuple):
    """One live teacher, or an ensemble, known by each member's final hidden states `(B, L, H_i)` and LM head.

    Members are softened by the temperature, then combined as `mode` says (`combine_log_probs`) with `weights`
    (summing to 1); one member is used as is. The divergence uses the vocabulary entries every member and the student
    have (models may pad their vocabularies differently).
    """

    hidden: Sequence[torch.Tensor]
    heads: Sequence[LMHead]
    weights: Sequence[float] = (1.0,)
    mode: str = "mean_probs"

    def check(self, labels: torch.Tensor, student_vocab: int) -> None:
        _check_members(len(self.heads), self.weights, self.mode)
        if len(self.hidden) != len(self.heads):
            raise ValueError(f"{len(self.hidden)} teacher hidden states for {len(self.heads)} teacher heads")
        names = ["teacher"] if len(self.heads) == 1 else [f"teacher {i}" for i in range(len(self.heads))]
        for name, hidden, head in zip(names, self.hidden, self.heads):
            head.check(name, hidden, labels)


class TeacherLogits(NamedTuple):
    """One live teacher, or an ensemble, known by each member's logits `(B, L, V_i)`; combined as in
    `TeacherHeads`."""

    logits: Sequence[torch.Tensor]
    weights: Sequence[float] = (1.0,)
    mode: str = "mean_probs"

    def check(self, labels: torch.Tensor, student_vocab: int) -> None:
        _check_members(len(self.logits), self.weights, self.mode)
        for logits in self.logits:
            if logits.shape[:-1] != labels.shape:
                raise ValueError(f"teacher logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} plus V")
