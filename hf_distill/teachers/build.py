"""The teacher of a run, resolved once from the config into one object of `hf_distill.teachers.protocol.Teacher`."""

import logging
from collections.abc import Callable
from typing import Any

from accelerate import Accelerator
from torch import nn

from ..config import DistillConfig
from ..models.causal_lm import check_vocabularies, output_width
from ..user_errors import UserInputError
from .cached import CachedTeacher
from .cross_tokenizer import CrossTokenizerTeacher
from .live import LiveTeacher, check_member_vocabularies
from .no_teacher import NoTeacher
from .placement import place_teacher
from .protocol import Teacher
from .server import ServerTeacher
from .shared_vocabulary import shared_vocabulary

logger = logging.getLogger(__name__)


def build_teacher(
    args: DistillConfig,
    members: list[nn.Module] | None,
    student: nn.Module,
    tokenizer: Any,
    accelerator: Accelerator,
    unwrap: Callable[[nn.Module], nn.Module],
    teacher_tokenizer: Any = None,
) -> Teacher:
    """The trainer's teacher, as `args.teacher_source` says: the server, checked against the student's vocabulary
    and `tokenizer` before any compute; the cache; the loaded teacher `members` (one model, or
    an ensemble's), checked against the student's vocabulary (and `tokenizer`'s, when there is one) and placed for
    the engine; or `NoTeacher`. A teacher with its own tokenizer takes `teacher_tokenizer`."""
    if args.teacher_source == "server":
        teacher = ServerTeacher(
            args.teacher_model_server_url,
            args.teacher_server_top_k,
            args.teacher_cache_mode,
            args.teacher_server_timeout,
        )
        teacher.check(output_width(student), tokenizer if hasattr(tokenizer, "decode") else None)
        return teacher
    if args.teacher_source == "cache":
        return CachedTeacher(args.teacher_cache_dir, args.teacher_cache_mode, args.teacher_paths)
    if not members:
        return NoTeacher()
    if args.uses_cross_tokenizer:
        return _cross_tokenizer_teacher(args, members, student, tokenizer, teacher_tokenizer, accelerator, unwrap)
    tokenizer_size = len(tokenizer) if tokenizer is not None and hasattr(tokenizer, "__len__") else None
    check_member_vocabularies(members)
    kd_vocab = min(check_vocabularies(student, t, tokenizer_size) for t in members)
    placed = [place_teacher(t, accelerator) for t in members]
    weights = args.ensemble_weights(len(placed))
    return LiveTeacher(placed, weights, args.teacher_ensemble, kd_vocab, args.teacher_paths, unwrap)


def _cross_tokenizer_teacher(
    args: DistillConfig,
    members: list[nn.Module],
    student: nn.Module,
    tokenizer: Any,
    teacher_tokenizer: Any,
    accelerator: Accelerator,
    unwrap: Callable[[nn.Module], nn.Module],
) -> CrossTokenizerTeacher:
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        raise UserInputError(
            "no student tokenizer",
            f"cross_tokenizer={args.cross_tokenizer!r}",
            "it matches the two vocabularies",
            "pass the student's tokenizer as processing_class",
        )
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
    logger.info(f"cross_tokenizer: {len(vocab.student_ids)} tokens shared by the two vocabularies")
    placed = place_teacher(teacher, accelerator)
    mode, uld_weight = args.cross_tokenizer, args.cross_tokenizer_uld_weight
    return CrossTokenizerTeacher(placed, vocab, mode, uld_weight, args.teacher_paths, unwrap)
