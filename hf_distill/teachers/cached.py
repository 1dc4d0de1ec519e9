"""A teacher read from a teacher cache (`teacher_cache_dir`): the top-k columns `DistillDataCollator` brings to the
training batches."""

from typing import Any

from ..data.datasets import CACHE_COLUMNS
from ..losses import TopKTeacher
from ..user_errors import UserInputError
from .protocol import TOP_K_LOG_PROBS


class CachedTeacher:
    """`hf_distill.teachers.protocol.Teacher` read from `cache_dir`. Evaluation batches carry no cache: evaluation
    then has no teacher.

    Args:
        cache_dir: the cache folder (`teacher_cache_dir`).
        mode: how the top-k becomes a distribution (`teacher_cache_mode`).
        teachers: the teacher models the cache was built from, as its manifest names them.
    """

    kind = "cache"
    gives = frozenset({TOP_K_LOG_PROBS})
    fused = True
    distills = True
    evaluates = False
    models = []
    writer = None

    def __init__(self, cache_dir: str, mode: str, teachers: list[str]):
        self.cache_dir, self.mode, self.teachers = cache_dir, mode, teachers

    def side(self, batch: dict[str, Any], model_inputs: dict[str, Any], fused: bool, training: bool):
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

    def names(self) -> list[str]:
        return list(self.teachers) or [f"the teacher cache {self.cache_dir}"]
