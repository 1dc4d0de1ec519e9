"""The teacher of a run without one (`alpha: 1`, plain fine-tuning): no divergence, nothing to run."""

from typing import Any


class NoTeacher:
    """`hf_distill.teachers.protocol.Teacher` of a run without a teacher."""

    kind = "none"
    gives = frozenset()
    # Nothing stops the fused path: the student's CE is chunked alone.
    fused = True
    distills = False
    evaluates = False
    models = []
    writer = None

    def side(self, batch: dict[str, Any], model_inputs: dict[str, Any], fused: bool, training: bool) -> None:
        return None

    def names(self) -> list[str]:
        return []
