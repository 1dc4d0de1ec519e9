"""The teacher a `DistillTrainer` distils from, built once from the config: live models (`LiveTeacher`, one model or
an ensemble; `CrossTokenizerTeacher`, one model with its own tokenizer) or a teacher cache's top-k (`CachedTeacher`).
Each hands the losses one teacher source."""

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from ..config import DistillConfig
from ..data.datasets import CACHE_COLUMNS
from ..losses import CrossVocabTeacher, TeacherHeads, TeacherLogits, TopKTeacher, VocabularyMap, check_ensemble_mode
from ..losses.ensemble import softened_teacher
from ..models.causal_lm import check_vocab_sizes, check_vocabularies, output_width
from ..models.hidden_states import final_hidden_states, lm_head
from ..models.loading import load_teacher_tokenizer
from ..user_errors import UserInputError
from .placement import place_teacher
from .shared_vocabulary import shared_vocabulary

logger = logging.getLogger(__name__)


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

    # Whether the fused chunked loss can take this teacher (`heads`).
    fused = True

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


class CrossTokenizerTeacher(LiveTeacher):
    """One live teacher with its own tokenizer (`cross_tokenizer`): it reads the batch's `teacher_input_ids`, and
    the losses compare it with the student span by span (`hf_distill.losses.CrossVocabTeacher`). Dense loss only.

    Args:
        member: the teacher model, placed for the engine.
        vocab: the tokens both vocabularies share.
        mode: `uld` or `aligned`.
        uld_weight: `cross_tokenizer_uld_weight`.
    """

    fused = False

    def __init__(self, member: nn.Module, vocab: VocabularyMap, mode: str, uld_weight: float):
        super().__init__([member], [1.0], "mean_probs", vocab.student_width)
        self.vocab, self.cross_mode, self.uld_weight = vocab, mode, uld_weight

    @torch.no_grad()
    def aligned_logits(self, batch: dict[str, Any]) -> CrossVocabTeacher:
        """The teacher's logits over its own tokens of the batch, with the batch's aligned spans."""
        if "teacher_input_ids" not in batch:
            raise UserInputError(
                "batch without teacher tokens",
                f"cross_tokenizer={self.cross_mode!r}",
                "the teacher reads its own tokens, and the batch carries none",
                "tokenize the dataset with hf_distill.data.prepare_datasets(..., teacher_tokenizer=...) and use "
                "DistillDataCollator",
            )
        inputs = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}
        logits = self.members[0](**inputs).logits[:, :-1]
        return CrossVocabTeacher(
            logits,
            batch["span_student_positions"],
            batch["span_teacher_positions"],
            self.vocab,
            self.cross_mode,
            self.uld_weight,
        )


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
                    "the cache to the train dataset (hf_distill.teachers.cache_builder.attach_teacher_cache) and use "
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
    if args.uses_cross_tokenizer:
        return _cross_tokenizer_teacher(args, members, student, tokenizer, accelerator)
    tokenizer_size = len(tokenizer) if tokenizer is not None and hasattr(tokenizer, "__len__") else None
    check_member_vocabularies(members)
    kd_vocab = min(check_vocabularies(student, t, tokenizer_size) for t in members)
    placed = [place_teacher(t, accelerator) for t in members]
    return LiveTeacher(placed, args.ensemble_weights(len(placed)), args.teacher_ensemble, kd_vocab)


def _cross_tokenizer_teacher(
    args: DistillConfig, members: list[nn.Module], student: nn.Module, tokenizer: Any, accelerator: Accelerator
) -> CrossTokenizerTeacher:
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        raise UserInputError(
            "no student tokenizer",
            f"cross_tokenizer={args.cross_tokenizer!r}",
            "it matches the two vocabularies",
            "pass the student's tokenizer as processing_class",
        )
    teacher_tokenizer = load_teacher_tokenizer(args)
    (teacher,) = members
    widths = output_width(student), output_width(teacher)
    for role, width, own in zip(("student", "teacher"), widths, (tokenizer, teacher_tokenizer)):
        if width < len(own):
            raise UserInputError(
                "vocabulary mismatch",
                f"the {role}",
                f"the {role}'s tokenizer has {len(own)} tokens but the {role} has {width} logits",
                f"use the {role}'s own tokenizer",
            )
    vocab = shared_vocabulary(tokenizer, teacher_tokenizer, *widths)
    if args.effective_loss_chunk_size > 0:
        logger.warning(
            f"cross_tokenizer={args.cross_tokenizer!r}: the loss is computed from full logits (dense path); "
            f"loss_chunk_size={args.effective_loss_chunk_size} applies to a teacher of the student's vocabulary only"
        )
    logger.info(f"cross_tokenizer: {len(vocab.student_ids)} tokens shared by the two vocabularies")
    return CrossTokenizerTeacher(
        place_teacher(teacher, accelerator), vocab, args.cross_tokenizer, args.cross_tokenizer_uld_weight
    )
