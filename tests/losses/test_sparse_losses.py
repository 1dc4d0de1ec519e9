"""`sparse_distillation_loss`: equal to the dense loss when the top-k is the whole vocabulary, and to explicit
probability tables when a tail bucket holds the rest."""

import pytest
import torch
import torch.nn.functional as F

from hf_distill import DistillConfig
from hf_distill.losses import (
    LOSS_TYPES,
    SPARSE_MODES,
    TopKTeacher,
    distillation_loss,
    linear_distillation_loss,
    sparse_distillation_loss,
)

B, L, V = 2, 5, 11

# The modes that define every loss type (teacher_renormalized is forward KL only: tested on its own).
EVERY_LOSS_TYPE_MODES = [mode for mode in SPARSE_MODES if mode != "teacher_renormalized"]


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(B, L, V, generator=gen) * 2
    teacher = torch.randn(B, L, V, generator=gen) * 2
    labels = torch.randint(0, V, (B, L), generator=gen)
    labels[0, :2] = -100
    return student, teacher, labels


def teacher_topk(teacher_logits, k):
    log_p = F.log_softmax(teacher_logits, dim=-1)
    logprobs, ids = log_p.topk(k, dim=-1)
    tail = torch.log1p(-logprobs.exp().sum(-1).clamp(max=1))
    return ids, logprobs, tail


@pytest.mark.parametrize("mode", EVERY_LOSS_TYPE_MODES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_full_vocabulary_topk_equals_dense(mode, loss_type, reduction):
    student, teacher, labels = inputs()
    ids, logprobs, _ = teacher_topk(teacher, V)
    # With K = V the tail is empty: log(0).
    tail = torch.full((B, L), float("-inf"))
    kwargs = dict(loss_type=loss_type, temperature=2.5, beta=0.3, skew_lambda=0.2, reduction=reduction)
    dense = distillation_loss(student, teacher, labels, **kwargs)
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    sparse = sparse_distillation_loss(s1, ids, logprobs, labels, tail_logprob=tail, mode=mode, **kwargs)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    distillation_loss(s2, teacher, labels, **kwargs).sum().backward()
    sparse.sum().backward()
    assert torch.isfinite(s1.grad).all()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-5)


def test_tail_bucket_matches_explicit_tables():
    """K = 3 of V = 11, T = 2, forward KL: tables built position by position with plain probabilities."""
    student, teacher, labels = inputs(1)
    k, temperature = 3, 2.0
    ids, logprobs, tail = teacher_topk(teacher, k)
    loss = sparse_distillation_loss(
        student, ids, logprobs, labels, tail_logprob=tail, mode="tail_bucket", temperature=temperature
    )
    expected = torch.tensor(0.0, dtype=torch.float64)
    for b in range(B):
        for i in range(L):
            if labels[b, i] == -100:
                continue
            p_student = torch.softmax(student[b, i].double() / temperature, dim=-1)
            top = ids[b, i].tolist()
            q = torch.stack([*(p_student[j] for j in top), p_student.sum() - p_student[top].sum()])
            raw = torch.cat([logprobs[b, i].double(), tail[b, i : i + 1].double()]).exp() ** (1 / temperature)
            p = raw / raw.sum()
            expected += F.kl_div(q.log(), p, reduction="sum")
    torch.testing.assert_close(loss.double(), expected * temperature**2, rtol=1e-5, atol=1e-6)


def test_renormalized_ignores_mass_outside_topk():
    student, teacher, labels = inputs(2)
    ids, logprobs, _ = teacher_topk(teacher, 4)
    loss = sparse_distillation_loss(student, ids, logprobs, labels, mode="renormalized")
    outside = torch.ones(B, L, V, dtype=torch.bool).scatter(-1, ids, False)
    shifted = student + outside * 5.0  # moves the student's mass outside the top-k, not its shape within it
    torch.testing.assert_close(sparse_distillation_loss(shifted, ids, logprobs, labels), loss)


def test_all_masked_is_zero():
    student, teacher, labels = inputs()
    ids, logprobs, tail = teacher_topk(teacher, 3)
    labels = torch.full_like(labels, -100)
    for mode in SPARSE_MODES:
        out = sparse_distillation_loss(student, ids, logprobs, labels, tail_logprob=tail, mode=mode, reduction="mean")
        assert out.item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mode="dense"), "mode='dense' is not supported"),
        (dict(mode="tail_bucket"), "mode='tail_bucket' needs tail_logprob"),
        (dict(loss_type="kl"), "loss_type='kl' is not supported"),
        (dict(temperature=0.0), "temperature must be > 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    student, teacher, labels = inputs()
    ids, logprobs, _ = teacher_topk(teacher, 3)
    with pytest.raises(ValueError, match=message):
        sparse_distillation_loss(student, ids, logprobs, labels, **kwargs)
    with pytest.raises(ValueError, match="plus a top-k dimension"):
        sparse_distillation_loss(student, ids[:1], logprobs[:1], labels)


@pytest.mark.parametrize("mode", EVERY_LOSS_TYPE_MODES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_chunked_sparse_equals_dense_sparse(mode, loss_type, reduction):
    """The fused path with a top-k teacher: value and gradients of alpha * CE + (1 - alpha) * sparse divergence, from
    explicit logits (bias, soft-capping, T != 1, masked positions, chunks that split the rows unevenly)."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, L, 6, generator=gen).requires_grad_()
    weight = torch.randn(V, 6, generator=gen).requires_grad_()
    bias = torch.randn(V, generator=gen).requires_grad_()
    _, teacher, labels = inputs(4)
    ids, logprobs, tail = teacher_topk(teacher, 4)
    kwargs = dict(loss_type=loss_type, temperature=1.7, beta=0.3, skew_lambda=0.2)

    chunked = linear_distillation_loss(
        hidden, weight, None, None, labels, student_bias=bias, alpha=0.3, chunk_size=3, reduction=reduction,
        student_softcap=4.0, teacher_topk=TopKTeacher(ids, logprobs, tail), sparse_mode=mode, **kwargs,
    )  # fmt: skip
    chunked_grads = torch.autograd.grad(chunked.sum(), (hidden, weight, bias))

    student = 4.0 * torch.tanh((hidden @ weight.T + bias) / 4.0)
    mask = labels != -100
    ce = torch.zeros(B, L)
    ce[mask] = F.cross_entropy(student[mask], labels[mask], reduction="none")
    kd = sparse_distillation_loss(
        student, ids, logprobs, labels, tail_logprob=tail, mode=mode, reduction="none", **kwargs
    )
    dense = 0.3 * ce + 0.7 * kd
    dense = dense if reduction == "none" else dense.sum()
    dense_grads = torch.autograd.grad(dense.sum(), (hidden, weight, bias))
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)
    for got, expected in zip(chunked_grads, dense_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_chunked_sparse_bad_arguments():
    _, teacher, labels = inputs()
    ids, logprobs, _ = teacher_topk(teacher, 3)
    hidden, weight = torch.randn(B, L, 6), torch.randn(V, 6)
    with pytest.raises(ValueError, match="mode='tail_bucket' needs tail_logprob"):
        linear_distillation_loss(
            hidden, weight, None, None, labels, teacher_topk=TopKTeacher(ids, logprobs), sparse_mode="tail_bucket"
        )
    with pytest.raises(ValueError, match="or as teacher_topk, not both"):
        linear_distillation_loss(hidden, weight, hidden, weight, labels, teacher_topk=TopKTeacher(ids, logprobs, None))
    with pytest.raises(ValueError, match="needs teacher_hidden and teacher_weight, or teacher_topk"):
        linear_distillation_loss(hidden, weight, None, None, labels)


def test_teacher_renormalized_against_its_formula_and_the_dense_loss():
    """DistillKit's objective (axolotl's without kd_normalize_topk): the teacher's top-k renormalised at T against the
    student's full-vocabulary log-probabilities at those ids, sum_k p_k (log p_k - log q_k); with K = V, forward KL."""
    student, teacher, labels = inputs(7)
    ids, logprobs, _ = teacher_topk(teacher, 4)
    got = sparse_distillation_loss(
        student, ids, logprobs, labels, mode="teacher_renormalized", temperature=2.0, reduction="none"
    )
    mask = labels != -100
    p = torch.softmax(logprobs.double() / 2.0, -1)
    q = torch.log_softmax(student.double() / 2.0, -1).gather(-1, ids)
    expected = 4.0 * (p * (p.log() - q)).sum(-1) * mask
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    # It exceeds `renormalized` by minus the log of the student's tempered top-k mass.
    renormalized = sparse_distillation_loss(student, ids, logprobs, labels, temperature=2.0, reduction="none")
    mass = torch.log_softmax(student.double() / 2.0, -1).gather(-1, ids).logsumexp(-1)
    torch.testing.assert_close(got.double(), (renormalized.double() - 4.0 * mass) * mask, rtol=1e-5, atol=1e-6)
    full_ids, full_logprobs, _ = teacher_topk(teacher, V)
    torch.testing.assert_close(
        sparse_distillation_loss(student, full_ids, full_logprobs, labels, mode="teacher_renormalized"),
        distillation_loss(student, teacher, labels),
        rtol=1e-5,
        atol=1e-5,
    )


def test_teacher_renormalized_is_forward_kl_only(tmp_path):
    student, teacher, labels = inputs()
    ids, logprobs, _ = teacher_topk(teacher, 3)
    message = "teacher_cache_mode='teacher_renormalized' is defined for loss_type='forward_kl' only"
    with pytest.raises(ValueError, match=message):
        sparse_distillation_loss(student, ids, logprobs, labels, mode="teacher_renormalized", loss_type="jsd")
    with pytest.raises(ValueError, match=message):
        DistillConfig(
            output_dir=str(tmp_path), teacher_cache_dir="cache", teacher_cache_mode="teacher_renormalized",
            loss_type="reverse_kl",
        )  # fmt: skip
