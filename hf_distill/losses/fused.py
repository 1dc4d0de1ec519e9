"""Fused linear + divergence: CE and divergence from final hidden states and LM heads, a chunk of positions at a
time, so the `(tokens x vocab)` logits never exist in full."""

from dataclasses import dataclass

import torch

from .divergences import IGNORE_INDEX, DivergenceSpec, check_reduction, mix, reduce
from .ensemble import softened_teacher
from .sources import LMHead, TeacherHeads
from .sparse import TopKTeacher, check_sparse_mode
from .terms import DistillationTerms, position_terms

# Valid positions projected at once by default: `benchmarks/loss_memory.py` measured 256 at 0.12x the dense memory
# (4096 x 32000 x 1024) while the matmuls stay large; the trainer's `loss_chunk_size` defaults to it too.
LOSS_CHUNK_SIZE = 256


@dataclass(frozen=True)
class _Plan:
    """Everything but tensors that the chunk loop needs; the teacher's tensors travel flat beside it."""

    spec: DivergenceSpec
    chunk_size: int
    student: LMHead  # detached: only its logit scale and soft-cap are read
    kd_vocab: int
    teacher_kind: str  # "none", "heads" or "topk"
    teacher_heads: tuple[LMHead, ...] = ()
    weights: tuple[float, ...] = ()
    mode: str = "mean_probs"
    sparse_mode: str = "renormalized"
    score_targets: bool = False


def _teacher_rows(plan: _Plan, teacher: tuple, rows: slice) -> torch.Tensor | TopKTeacher | None:
    """The teacher at one chunk of valid positions: softened log-probabilities `(chunk, kd_vocab)`, or top-k rows."""
    if plan.teacher_kind == "topk":
        return TopKTeacher(*teacher, mode=plan.sparse_mode).rows(rows)
    if plan.teacher_kind == "none":
        return None
    # Projected one member at a time (a generator), so that one member's chunk logits are alive at a time.
    members = (
        head.post_process(torch.nn.functional.linear(hidden[rows].float(), weight, bias))
        for head, hidden, weight, bias in zip(plan.teacher_heads, teacher[::3], teacher[1::3], teacher[2::3])
    )
    return softened_teacher(members, plan.weights, plan.mode, plan.spec.temperature, plan.kd_vocab)


def _chunk(
    hidden: torch.Tensor,
    s_weight: torch.Tensor,
    s_bias: torch.Tensor | None,
    teacher_rows: torch.Tensor | TopKTeacher | None,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    plan: _Plan,
    with_grad: bool,
) -> tuple[torch.Tensor | None, ...]:
    """CE, divergence, agreement and scored targets of one chunk of float32 student rows, and, with `with_grad`,
    the gradient of `sum(weights * (alpha * ce + (1 - alpha) * kd))` w.r.t. the chunk's raw logits
    `hidden @ s_weight.T + s_bias`.

    A function of its own so that every `(chunk, V)` intermediate is freed on return, before the caller's matmuls.
    """
    raw = torch.nn.functional.linear(hidden, s_weight, s_bias)
    with torch.enable_grad():
        # The raw logits are the leaf: everything after the matmul is differentiated here, and the matmul's own
        # backward is done by the caller, straight into the accumulated gradients.
        raw.requires_grad_(with_grad)
        logits = plan.student.post_process(raw)
        ce, kd, agree, scored = position_terms(
            logits, targets, teacher_rows, plan.spec, plan.kd_vocab, plan.score_targets
        )
        if not with_grad:
            return ce, kd, agree, scored, None
        terms = [(plan.spec.alpha, ce)] if plan.spec.alpha > 0.0 else []
        if kd is not None:
            terms.append((1.0 - plan.spec.alpha, kd))
        objective = sum(w * (v if weights is None else v * weights).sum() for w, v in terms)
        (grad_raw,) = torch.autograd.grad(objective, raw)
    return ce.detach(), None if kd is None else kd.detach(), agree, scored, grad_raw


def _chunked_pass(
    s_hidden: torch.Tensor,
    s_weight: torch.Tensor,
    s_bias: torch.Tensor | None,
    teacher: tuple,
    targets: torch.Tensor,
    plan: _Plan,
    needs: tuple[bool, bool, bool],
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Per-position CE, divergence and agreement of the `(N, H)` valid rows, `plan.chunk_size` rows at a time.

    `teacher` holds `(hidden, weight, bias)` of each teacher head (hidden states per valid row), or the cached
    `(topk_ids, topk_logprobs, tail_logprob)` per valid row, or nothing.

    With any of `needs` (hidden, weight, bias) set, also returns the float32 gradients of
    `sum(w * (alpha * ce + (1 - alpha) * kd))` with w = `grad_scale` (N,), or 1 when it is None.
    """
    f32 = torch.float32
    n = s_hidden.shape[0]
    with_grad = any(needs)
    # One float32 copy of each head (none when it already is float32): casting per chunk would redo it every chunk.
    s_weight32 = s_weight.to(f32)
    s_bias32 = None if s_bias is None else s_bias.to(f32)
    if plan.teacher_kind == "heads":
        teacher = tuple(
            t
            for hidden, weight, bias in zip(teacher[::3], teacher[1::3], teacher[2::3])
            for t in (hidden, weight[: plan.kd_vocab].to(f32), None if bias is None else bias[: plan.kd_vocab].to(f32))
        )
    ce_values = torch.zeros(n, dtype=f32, device=s_hidden.device)
    kd_values = torch.zeros_like(ce_values)
    agree_values = torch.zeros_like(ce_values)
    scored_values = torch.zeros_like(ce_values)
    grad_hidden = s_hidden.new_empty(s_hidden.shape, dtype=f32) if needs[0] else None
    grad_weight = torch.zeros_like(s_weight32) if needs[1] else None
    grad_bias = torch.zeros_like(s_bias32) if needs[2] else None

    for start in range(0, n, plan.chunk_size):
        rows = slice(start, min(start + plan.chunk_size, n))
        hidden = s_hidden[rows].to(f32)
        weights = None if grad_scale is None else grad_scale[rows]
        ce, kd, agree, scored, grad_raw = _chunk(
            hidden, s_weight32, s_bias32, _teacher_rows(plan, teacher, rows), targets[rows], weights, plan, with_grad
        )
        ce_values[rows] = ce
        if kd is not None:
            kd_values[rows] = kd
            agree_values[rows] = agree
        if scored is not None:
            scored_values[rows] = scored
        # Dropped as soon as possible, here and below, so that one chunk's buffers are alive at a time.
        if grad_hidden is not None:
            torch.mm(grad_raw, s_weight32, out=grad_hidden[rows])
        if grad_weight is not None:
            grad_weight.addmm_(grad_raw.T, hidden)
        if grad_bias is not None:
            grad_bias += grad_raw.sum(0)
        del grad_raw
    return ce_values, kd_values, agree_values, scored_values, grad_hidden, grad_weight, grad_bias


class _FusedLinearDistillation(torch.autograd.Function):
    """Autograd wrapper of `_chunked_pass` over the valid rows.

    `per_position=False` (scalar sum) computes the gradients during the forward pass, so the chunk logits are made
    once, and only scales them by the incoming scalar in backward. `per_position=True` (the public
    `linear_distillation_loss(reduction="none")`) returns `(N,)` values whose incoming gradient differs per position,
    which cannot be folded into a precomputed weight gradient; its backward runs the chunks a second time with those
    weights.
    """

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, targets, plan, per_position, *teacher):
        needs = tuple(ctx.needs_input_grad[:3])
        ctx.plan, ctx.per_position, ctx.n_teacher = plan, per_position, len(teacher)
        ctx.dtypes = (s_hidden.dtype, s_weight.dtype, None if s_bias is None else s_bias.dtype)
        if per_position:
            ce, kd, agree, scored, *_ = _chunked_pass(s_hidden, s_weight, s_bias, teacher, targets, plan, (False,) * 3)
            ctx.save_for_backward(s_hidden, s_weight, s_bias, targets, *teacher)
            # With alpha 0 or 1 the mix is `kd` or `ce` itself, which must not be both differentiable and not.
            out = mix(ce, kd, plan.spec.alpha).clone()
        else:
            ce, kd, agree, scored, *grads = _chunked_pass(s_hidden, s_weight, s_bias, teacher, targets, plan, needs)
            ctx.save_for_backward(*grads)
            ctx.consumed = False
            out = mix(ce.sum(), kd.sum(), plan.spec.alpha)
        ctx.mark_non_differentiable(ce, kd, agree, scored)
        return out, ce, kd, agree, scored

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def backward(ctx, grad_out, _grad_ce, _grad_kd, _grad_agree, _grad_scored):
        if ctx.per_position:
            s_hidden, s_weight, s_bias, targets, *teacher = ctx.saved_tensors
            needs = tuple(ctx.needs_input_grad[:3])
            scale = grad_out.float()
            _, _, _, _, *grads = _chunked_pass(s_hidden, s_weight, s_bias, teacher, targets, ctx.plan, needs, scale)
        else:
            if ctx.consumed:
                raise RuntimeError(
                    "the fused distillation loss scales its precomputed gradients in place, so it cannot be "
                    "backpropagated twice (retain_graph=True); compute the loss again instead"
                )
            ctx.consumed = True
            grads = list(ctx.saved_tensors)
            # The forward pass computed d(loss)/d(input) for an upstream gradient of 1; the chain rule scales it.
            if not torch.equal(grad_out, torch.ones_like(grad_out)):
                grads = [None if g is None else g.mul_(grad_out.float()) for g in grads]
        grads = [None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        # No gradient for targets, plan, per_position and the teacher's tensors.
        return (*grads, None, None, None, *[None] * ctx.n_teacher)


def _check(student_hidden, student_head, teacher, labels, spec, chunk_size, reduction) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
    check_reduction(reduction)
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must hold integer token ids, got labels.dtype={labels.dtype}")
    student_head.check("student", student_hidden, labels)
    if spec.alpha < 1.0 and teacher is None:
        raise ValueError(
            f"alpha={spec.alpha} < 1 needs teacher_hidden and teacher_weight, or teacher_topk (only alpha=1.0 skips "
            "them)"
        )
    if spec.alpha < 1.0:
        teacher.check(labels, student_head.vocab_size)
        if isinstance(teacher, TopKTeacher):
            check_sparse_mode(teacher.mode, spec.loss_type)


def fused_distillation_loss(
    student_hidden: torch.Tensor,
    student_head: LMHead,
    teacher: TeacherHeads | TopKTeacher | None,
    labels: torch.Tensor,
    spec: DivergenceSpec,
    chunk_size: int = LOSS_CHUNK_SIZE,
    reduction: str = "sum",
    score_targets: bool = False,
) -> DistillationTerms:
    """`alpha * CE + (1 - alpha) * T**2 * D` over the valid positions, from final hidden states and LM heads.

    Same value and gradients as projecting to full logits and calling `dense_distillation_terms`, but only
    `chunk_size` valid positions are projected at a time and their gradients are computed and accumulated right away,
    so the `(tokens, vocab)` logits never exist in full.

    Args:
        student_hidden: final hidden states `(B, L, H)`, the student's LM head `student_head` `(V, H)`.
        teacher: live teachers as `TeacherHeads` (one model or an ensemble, hidden widths and vocabularies may
            differ: the divergence uses the first `min(V_s, V_t...)` entries, the CE all `V`), a cached `TopKTeacher`,
            or None when `spec.alpha == 1.0` (never read then either).
        labels: `(B, L)` targets aligned with the positions (already shifted); `-100` marks ignored positions.
        chunk_size: valid positions projected at once, >= 1. The peak memory holds about ten float32
            `(chunk_size, V)` buffers on top of a float32 copy of the student head's gradient (and float32 copies of
            bf16/fp16 heads).
        score_targets: also return the teacher's log-probability of each target (see `position_terms`).
        reduction: `"sum"` (the trainer's), `"mean"` or `"none"` (`(B, L)`, which projects every chunk again in
            backward, since each position then gets its own upstream gradient).

    Returns `DistillationTerms`; only `loss` carries gradients (to the student's hidden states, weight and bias, in
    their dtypes; the maths runs in float32). The gradients of "sum" and "mean" are computed during the forward pass
    and scaled by the upstream gradient in backward, so the loss can be backpropagated once only.
    """
    _check(student_hidden, student_head, teacher, labels, spec, chunk_size, reduction)
    with_kd = spec.alpha < 1.0 and teacher is not None
    kd_vocab = student_head.vocab_size
    plan_teacher = dict(teacher_kind="none")
    teacher_tensors: tuple = ()
    mask = labels != IGNORE_INDEX
    if with_kd and isinstance(teacher, TopKTeacher):
        plan_teacher = dict(teacher_kind="topk", sparse_mode=teacher.mode)
        rows = teacher.rows(mask)
        teacher_tensors = (rows.ids, rows.logprobs, rows.tail)
    elif with_kd:
        kd_vocab = min(kd_vocab, *(head.vocab_size for head in teacher.heads))
        heads = tuple(head.detach() for head in teacher.heads)
        plan_teacher = dict(teacher_kind="heads", teacher_heads=heads, weights=tuple(teacher.weights))
        plan_teacher["mode"] = teacher.mode
        # The teacher only supplies targets: it gets no gradient.
        teacher_tensors = tuple(
            t for hidden, head in zip(teacher.hidden, heads) for t in (hidden.detach()[mask], head.weight, head.bias)
        )
    plan = _Plan(
        spec=spec,
        chunk_size=chunk_size,
        student=student_head.detach(),
        kd_vocab=kd_vocab,
        score_targets=score_targets,
        **plan_teacher,
    )
    per_position = reduction == "none"
    student = (student_hidden[mask], student_head.weight, student_head.bias)
    targets = labels[mask]
    # The chunk maths is float32 by design: under torch.autocast its matmuls would come out in bf16/fp16 (the in-place
    # `out=` products then refuse them, and fp16 cannot hold the log-probability floor).
    with torch.autocast(student_hidden.device.type, enabled=False):
        return _fused(student, targets, plan, per_position, teacher_tensors, mask, reduction)


def _fused(student, targets, plan, per_position, teacher_tensors, mask, reduction) -> DistillationTerms:
    spec = plan.spec
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in student):
        out, ce, kd, agree, scored = _FusedLinearDistillation.apply(
            *student, targets, plan, per_position, *teacher_tensors
        )
    else:
        ce, kd, agree, scored, *_ = _chunked_pass(*student, teacher_tensors, targets, plan, (False,) * 3)
        out = mix(ce, kd, spec.alpha) if per_position else mix(ce.sum(), kd.sum(), spec.alpha)
    loss = reduce(out, mask, "none") if per_position else out
    if reduction == "mean":
        loss = loss / mask.sum().clamp(min=1)
    return DistillationTerms(loss, ce, kd, agree, mask, scored)
