"""The teacher a `DistillTrainer` distils from, built once from the config: live models (`LiveTeacher`, one model or
an ensemble) or a teacher cache's top-k (`CachedTeacher`). Each hands the losses one teacher source."""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from .config import DistillConfig
from .data import CACHE_COLUMNS
from .hidden_states import final_hidden_states, lm_head
from .losses import TeacherHeads, TeacherLogits, TopKTeacher, check_ensemble_mode
from .losses.ensemble import softened_teacher
from .modeling import check_vocab_sizes, check_vocabularies, output_width
from .teacher_placement import place_teacher
from .user_errors import UserInputError


def check_member_vocabularies(members: Sequence[nn.Module]) -> None:
    """Members must share one vocabulary: their logit widths may differ only by embedding padding."""
    widths = [output_width(m) for m in members]
    for i, width in enumerate(widths[1:], start=1):
        try:
            check_vocab_sizes(widths[0], width, None)
        except ValueError:
            raise UserInputError(
                f"teacher ensemble vocabulary mismatch: teacher 0 has {widths[0]} logits and teacher {i} has "
                f"{width}, more than embedding padding apart; ensemble members need one shared tokenizer"
            ) from None


class LiveTeacher:
    """Teacher models run alongside the student: one, or an ensemble whose members are softened by the temperature
    and then combined as `mode` says with `weights` (`hf_distill.losses.combine_log_probs`).

    Members of weight 0 are dropped, never run. Every method returns the teacher at the positions that predict a
    next token (`[:, :-1]`, aligned with `labels[:, 1:]`) and runs without gradients.

    Args:
        members: the teacher models, frozen and placed for the engine (DDP copy, FSDP2 shards, ZeRO-3 engine).
        weights: one per member, summing to 1.
        mode: `mean_probs` or `mean_logprobs`.
        kd_vocab: the vocabulary entries the divergence compares (the student's and the members' widths agree up to
            embedding padding).
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], mode: str, kd_vocab: int):
        check_ensemble_mode(mode)
        kept = [(m, w) for m, w in zip(members, weights) if w > 0]
        self.members = [m for m, _ in kept]
        self.weights = [w for _, w in kept]
        self.mode, self.kd_vocab = mode, kd_vocab

    @torch.no_grad()
    def heads(self, model_inputs: dict[str, Any], unwrap: Callable[[nn.Module], nn.Module]) -> TeacherHeads:
        """Final hidden states and LM heads, for the fused loss; `unwrap` strips the engine's wrapper."""
        hidden = [final_hidden_states(m, unwrap(m), model_inputs)[:, :-1] for m in self.members]
        return TeacherHeads(hidden, [lm_head(unwrap(m)) for m in self.members], self.weights, self.mode)

    @torch.no_grad()
    def logits(self, model_inputs: dict[str, Any]) -> TeacherLogits:
        """Each member's full logits, for the dense loss."""
        return TeacherLogits([m(**model_inputs).logits[:, :-1] for m in self.members], self.weights, self.mode)

    @torch.no_grad()
    def log_probs(self, model_inputs: dict[str, Any], temperature: float = 1.0) -> torch.Tensor:
        """The teacher's distribution `(B, L - 1, kd_vocab)` softened by `temperature`, as log-probabilities."""
        members = (m(**model_inputs).logits[:, :-1] for m in self.members)
        return softened_teacher(members, self.weights, self.mode, temperature, self.kd_vocab)


class CachedTeacher:
    """A teacher read from `teacher_cache_dir`: the top-k columns `DistillDataCollator` brings to the training
    batches. Evaluation batches carry none: evaluation then has no teacher."""

    def __init__(self, cache_dir: str, mode: str):
        self.cache_dir, self.mode = cache_dir, mode

    def top_k(self, batch: dict[str, Any], training: bool) -> TopKTeacher | None:
        if not all(name in batch for name in CACHE_COLUMNS):
            if training:
                raise UserInputError(
                    f"teacher_cache_dir={self.cache_dir!r}, but the training batches carry no cached teacher: attach "
                    "the cache to the train dataset (hf_distill.teacher_cache.attach_teacher_cache) and use "
                    "DistillDataCollator"
                )
            return None
        ids, logprobs, tail = (batch[name] for name in CACHE_COLUMNS)
        return TopKTeacher(ids, logprobs, tail, self.mode)


def build_teacher(
    args: DistillConfig,
    members: list[nn.Module] | None,
    student: nn.Module,
    processing_class: Any,
    accelerator: Accelerator,
) -> LiveTeacher | CachedTeacher | None:
    """The trainer's teacher, as `args.teacher_source` says: the cache; the loaded teacher `members` (one model, or an
    ensemble's), checked against the student's vocabulary (and the tokenizer's, when `processing_class` has one) and
    placed for the engine; or None."""
    if args.teacher_source == "cache":
        return CachedTeacher(args.teacher_cache_dir, args.teacher_cache_mode)
    if not members:
        return None
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    tokenizer_size = len(tokenizer) if tokenizer is not None and hasattr(tokenizer, "__len__") else None
    check_member_vocabularies(members)
    kd_vocab = min(check_vocabularies(student, t, tokenizer_size) for t in members)
    placed = [place_teacher(t, accelerator) for t in members]
    return LiveTeacher(placed, args.ensemble_weights(len(placed)), args.teacher_ensemble, kd_vocab)
