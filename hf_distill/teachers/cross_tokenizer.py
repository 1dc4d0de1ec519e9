"""A live teacher with its own tokenizer (`cross_tokenizer`), compared with the student span by span."""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..losses import CrossVocabTeacher, VocabularyMap
from ..user_errors import UserInputError
from .live import LiveTeacher
from .protocol import DENSE_LOGITS


class CrossTokenizerTeacher(LiveTeacher):
    """`hf_distill.teachers.protocol.Teacher` of one live model with its own tokenizer: it reads the batch's
    `teacher_input_ids`, and the losses compare it with the student span by span
    (`hf_distill.losses.CrossVocabTeacher`). Dense loss only.

    Args:
        member: the teacher model, placed for the engine.
        vocab: the tokens both vocabularies share.
        mode: `uld` or `aligned`.
        uld_weight: `cross_tokenizer_uld_weight`.
        names: the teacher as the model card names it.
        unwrap: strips the engine's wrapper from the member.
    """

    gives = frozenset({DENSE_LOGITS})
    fused = False
    # Generated text is not re-tokenized for the teacher (the config refuses generation with cross_tokenizer).
    writer = None

    def __init__(
        self,
        member: nn.Module,
        vocab: VocabularyMap,
        mode: str,
        uld_weight: float,
        names: list[str] = (),
        unwrap: Callable[[nn.Module], nn.Module] = lambda model: model,
    ):
        super().__init__([member], [1.0], "mean_probs", vocab.student_width, names, unwrap)
        self.vocab, self.cross_mode, self.uld_weight = vocab, mode, uld_weight
        self.kind = "cross_tokenizer"

    @torch.no_grad()
    def side(self, batch: dict[str, Any], model_inputs: dict[str, Any], fused: bool, training: bool):
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
        logits = self.models[0](**inputs, use_cache=False).logits[:, :-1]
        return CrossVocabTeacher(
            logits,
            batch["span_student_positions"],
            batch["span_teacher_positions"],
            self.vocab,
            self.cross_mode,
            self.uld_weight,
        )
