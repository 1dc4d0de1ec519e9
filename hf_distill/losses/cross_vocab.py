"""Divergences between a student and a teacher with different vocabularies, compared span by span
(`data.token_alignment`): the sorted-probability L1 of ULD (Boizard et al. 2024) and the aligned divergence on
the tokens both vocabularies share.

Each aligned span is compared once, at its first token on each side: both models then predict the next token from
the same text (the span starts where both tokenizations have a boundary), which the later tokens of a span split
differently on the two sides do not.
"""

from typing import NamedTuple

import torch

from .divergences import IGNORE_INDEX, DivergenceSpec, divergence, soften

CROSS_TOKENIZER_MODES = ("off", "uld", "aligned")


class VocabularyMap(NamedTuple):
    """The tokens both vocabularies have: `student_ids[i]` and `teacher_ids[i]` are the same string, in increasing
    student id. `student_width` and `teacher_width` are the models' logit widths (rows past a tokenizer's size are
    never shared)."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_width: int
    teacher_width: int

    def to(self, device: torch.device) -> "VocabularyMap":
        return self._replace(student_ids=self.student_ids.to(device), teacher_ids=self.teacher_ids.to(device))

    def covers_both(self) -> bool:
        """Whether every logit of both models is shared, in the same order (one tokenizer on both sides)."""
        n = len(self.student_ids)
        return n == self.student_width == self.teacher_width and bool(
            (self.student_ids == self.teacher_ids).all()
            and (self.student_ids == torch.arange(n, device=self.student_ids.device)).all()
        )

    def teacher_to_student(self) -> torch.Tensor:
        """`(teacher_width,)`: the student id of each teacher id, -1 where the teacher's token is not shared."""
        lookup = torch.full((self.teacher_width,), -1, dtype=torch.long, device=self.teacher_ids.device)
        return lookup.index_copy(0, self.teacher_ids, self.student_ids)


def uld_distance(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """ULD: `sum_i |sort(p_T)_i - sort(p_S)_i|`, both probability vectors sorted in decreasing order and the shorter
    one padded with zeros; `(N, V_S)` and `(N, V_T)` log-probabilities in, `(N,)` out."""
    p_s = student_log_probs.exp().sort(-1, descending=True).values
    p_t = teacher_log_probs.exp().sort(-1, descending=True).values
    width = max(p_s.shape[-1], p_t.shape[-1])
    p_s = torch.nn.functional.pad(p_s, (0, width - p_s.shape[-1]))
    p_t = torch.nn.functional.pad(p_t, (0, width - p_t.shape[-1]))
    return (p_t - p_s).abs().sum(-1)


def _unshared(log_probs: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(log_probs.shape[-1], dtype=torch.bool, device=log_probs.device)
    keep[shared] = False
    return log_probs[:, keep]


def aligned_divergence(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    vocab: VocabularyMap,
    spec: DivergenceSpec,
    uld_weight: float,
) -> torch.Tensor:
    """`D(p_T|shared || p_S|shared) + uld_weight * ULD(p_T|rest, p_S|rest)`, `(N,)`: `spec`'s divergence between
    both distributions restricted to the shared tokens and renormalised there, plus the ULD of the probabilities of
    all other tokens (not renormalised, so the mass each model puts outside the shared tokens counts). With one
    vocabulary on both sides this is `spec`'s divergence itself, bit for bit."""
    if vocab.covers_both():
        return divergence(
            student_log_probs,
            teacher_log_probs,
            loss_type=spec.loss_type,
            beta=spec.beta,
            skew_lambda=spec.skew_lambda,
        )
    shared_s = student_log_probs[:, vocab.student_ids]
    shared_t = teacher_log_probs[:, vocab.teacher_ids]
    shared_s = shared_s - shared_s.logsumexp(-1, keepdim=True)
    shared_t = shared_t - shared_t.logsumexp(-1, keepdim=True)
    values = divergence(shared_s, shared_t, loss_type=spec.loss_type, beta=spec.beta, skew_lambda=spec.skew_lambda)
    if uld_weight > 0:
        rest_s = _unshared(student_log_probs, vocab.student_ids)
        rest_t = _unshared(teacher_log_probs, vocab.teacher_ids)
        values = values + uld_weight * uld_distance(rest_s, rest_t)
    return values


class CrossVocabTeacher(NamedTuple):
    """A live teacher with its own tokenizer, for the dense loss: its logits `(B, L_T, V_T)` over its own tokens
    (already shifted: position j predicts teacher token j + 1), and the aligned spans of each row as the positions
    `(B, S)` of the student's and the teacher's logits that predict each span's first token (-1 pads)."""

    logits: torch.Tensor
    student_positions: torch.Tensor
    teacher_positions: torch.Tensor
    vocab: VocabularyMap
    mode: str
    uld_weight: float = 1.0

    def check(self, labels: torch.Tensor, student_vocab: int) -> None:
        if self.mode not in CROSS_TOKENIZER_MODES[1:]:
            raise ValueError(f"cross_tokenizer={self.mode!r} is not a cross-tokenizer loss; use 'uld' or 'aligned'")
        if self.student_positions.shape != self.teacher_positions.shape or self.student_positions.shape[0] != len(
            labels
        ):
            raise ValueError(
                f"span positions {tuple(self.student_positions.shape)} (student) and "
                f"{tuple(self.teacher_positions.shape)} (teacher) must be ({len(labels)}, spans)"
            )
        if student_vocab != self.vocab.student_width or self.logits.shape[-1] != self.vocab.teacher_width:
            raise ValueError(
                f"logit widths {student_vocab} (student) and {self.logits.shape[-1]} (teacher) do not match the "
                f"shared vocabulary's {self.vocab.student_width} and {self.vocab.teacher_width}"
            )


def span_divergence(
    student_logits: torch.Tensor, labels: torch.Tensor, teacher: CrossVocabTeacher, spec: DivergenceSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Divergence times `temperature**2` and top-1 agreement `(N,)` at the N valid positions of `labels`: at the
    position that predicts each aligned span's first student token, ULD (`uld`) or `aligned_divergence` (`aligned`)
    of both models' distributions softened by the temperature; 0 at every other position. Agreement is 1.0 where
    both models' most likely tokens are the same shared token."""
    mask = labels != IGNORE_INDEX
    valid = teacher.student_positions >= 0
    rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(valid)[valid]
    s_pos, t_pos = teacher.student_positions[valid], teacher.teacher_positions[valid]
    if not mask[rows, s_pos].all():
        raise ValueError("an aligned span starts at a student position whose label is -100; spans must be targets")
    log_s = soften(student_logits[rows, s_pos].float(), spec.temperature)
    with torch.no_grad():
        log_t = soften(teacher.logits[rows, t_pos].float(), spec.temperature)
    vocab = teacher.vocab.to(log_s.device)
    if teacher.mode == "uld":
        values = uld_distance(log_s, log_t)
    else:
        values = aligned_divergence(log_s, log_t, vocab, spec, teacher.uld_weight)
    values = values * spec.temperature**2
    kd = values.new_zeros(mask.shape).index_put((rows, s_pos), values)[mask]
    with torch.no_grad():
        same = log_s.argmax(-1) == vocab.teacher_to_student()[log_t.argmax(-1)]
        agree = torch.zeros(mask.shape, device=labels.device).index_put((rows, s_pos), same.float())[mask]
    return kd, agree
