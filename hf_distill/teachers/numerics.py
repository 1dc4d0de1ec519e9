"""A teacher whose outputs hold NaN or inf (broken weights, or an overflow in its dtype) stops the run at the step
where it happens: its divergence would otherwise be garbage, skipped step after step or silently learned from."""

import torch
from accelerate.utils import gather_object

from ..losses import IGNORE_INDEX, CrossVocabTeacher, TeacherHeads, TeacherLogits
from ..user_errors import UserInputError


class NonFiniteTeacherError(UserInputError):
    """The teacher produced NaN or inf at a target position."""


def _bad_rows(values: torch.Tensor, targets: torch.Tensor, allow_minus_inf: bool) -> torch.Tensor:
    """`(B,)` flags: rows with a target position whose `values` (B, L, D) hold NaN or inf.

    Reduced over the last dimension first (one pass, no copy of the large tensor): a sum is NaN or +-inf as soon as
    one term is. Logits may be -inf (a token the teacher rules out), hidden states may not. Positions that are no
    target are not looked at: padding may hold anything.
    """
    sums = values.sum(-1, dtype=torch.float32)
    bad = sums.isnan() | (sums == float("inf")) if allow_minus_inf else ~sums.isfinite()
    return (bad & targets.ne(IGNORE_INDEX)).any(-1)


def check_teacher_finite(trainer, teacher, targets: torch.Tensor, ids: list | None, mode: str) -> None:
    """Raise `NonFiniteTeacherError` naming the step, the teacher and the examples if a live teacher's logits (dense
    path) or final hidden states (fused path) hold NaN or inf at a target position of this micro-batch.

    The flag is reduced over processes, so every process raises together and none waits on the others.
    """
    if isinstance(teacher, TeacherLogits):
        rows = [_bad_rows(logits, targets, allow_minus_inf=True) for logits in teacher.logits]
    elif isinstance(teacher, CrossVocabTeacher):
        # The teacher's own positions that the loss reads: those predicting each span's first token.
        read = torch.full(teacher.logits.shape[:-1], IGNORE_INDEX, device=teacher.logits.device)
        spans = teacher.teacher_positions
        valid = spans >= 0
        read[torch.arange(len(spans), device=spans.device)[:, None].expand_as(spans)[valid], spans[valid]] = 0
        rows = [_bad_rows(teacher.logits, read, allow_minus_inf=True)]
    elif isinstance(teacher, TeacherHeads):
        # The heads are not read here: a frozen teacher's head does not change, and one holding NaN or inf makes its
        # logits on the trainer's probe not finite, which sends it to the dense path (`fused_heads_reproduce_logits`).
        rows = [_bad_rows(hidden, targets, allow_minus_inf=False) for hidden in teacher.hidden]
    else:
        return  # no teacher, or a cache: its values were checked when it was built
    flags = torch.stack([r.any() for r in rows]).float()
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags.to(accelerator.device), reduction="max")
    if not flags.any():
        return
    bad = sorted({i for r in rows for i in r.nonzero().flatten().tolist()})
    names = [str(ids[i]) for i in bad] if ids else [f"row {i} of the micro-batch" for i in bad]
    if accelerator.num_processes > 1:
        names = gather_object(names)
    paths = trainer.args.teacher_paths
    members = [i for i, f in enumerate(flags.tolist()) if f]
    who = ", ".join(repr(paths[i]) if len(paths) == len(rows) else f"teacher {i}" for i in members)
    where = (
        f"step {trainer.state.global_step + 1}"
        if mode == "train"
        else f"evaluation at step {trainer.state.global_step}"
    )
    raise NonFiniteTeacherError(
        "teacher produced NaN or inf",
        where,
        f"the teacher ({who}), at target tokens of examples {', '.join(names[:16])}{', ...' * (len(names) > 16)}",
        "check its weights, or load it in float32 (teacher_model_init_kwargs: {dtype: float32}) if it overflows",
    )
