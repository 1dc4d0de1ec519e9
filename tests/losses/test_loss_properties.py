"""Property tests of `distillation_loss`, `linear_distillation_loss` and `sparse_distillation_loss` on adversarial
logits.

Hypothesis draws the shapes, magnitudes (|logit| up to 1e4), temperatures, masks and a seed; the tensors are built
from the seed with torch, which keeps every example cheap. Float32 rounding of a log-probability grows with its
magnitude |logit| / T and the loss carries a T**2 factor, so "zero" and "non-negative" are checked up to
1e-5 * scale with scale = T**2 * (1 + max|logit| / T).
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_distill.losses import (
    IGNORE_INDEX,
    LOSS_TYPES,
    SPARSE_MODES,
    TopKTeacher,
    distillation_loss,
    linear_distillation_loss,
    sparse_distillation_loss,
)

# Derandomized: CI runs the examples that ran here, so a float32 edge case found by chance cannot turn a run red.
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)
# Loss types that stay finite when the teacher gives zero probability to entries the student does not: every one
# that never divides by the teacher's probability (KL(p_S || p_T) does).
TEACHER_ZEROS_OK = ("forward_kl", "jsd", "skew_forward_kl", "tvd")

magnitudes = st.floats(min_value=1e-3, max_value=1e4)
temperatures = st.floats(min_value=0.1, max_value=10.0)

# The modes that define every loss type (teacher_renormalized is forward KL only: tested on its own).
EVERY_LOSS_TYPE_MODES = [mode for mode in SPARSE_MODES if mode != "teacher_renormalized"]


def tolerance(temperature: float, magnitude: float) -> float:
    return 1e-5 * temperature**2 * (1 + magnitude / temperature)


def uniform(gen: torch.Generator, *shape: int, magnitude: float = 1.0) -> torch.Tensor:
    return (torch.rand(*shape, generator=gen) * 2 - 1) * magnitude


def random_labels(gen: torch.Generator, shape: tuple[int, ...], vocab: int, masked: float) -> torch.Tensor:
    labels = torch.randint(0, vocab, shape, generator=gen)
    labels[torch.rand(shape, generator=gen) < masked] = IGNORE_INDEX
    return labels


def vocab_mask(gen: torch.Generator, shape: tuple[int, ...], fraction: float) -> torch.Tensor:
    """Entries to set to -inf, keeping at least one finite entry per row (an all -inf row has no distribution)."""
    mask = torch.rand(shape, generator=gen) < fraction
    keep = torch.randint(0, shape[-1], (*shape[:-1], 1), generator=gen)
    return mask.scatter(-1, keep, False)


@st.composite
def logit_pairs(draw, teacher_only_inf: bool = False):
    """(student, teacher, labels, temperature, magnitude), with -inf entries in both or in the teacher only."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 50)))
    magnitude, temperature = draw(magnitudes), draw(temperatures)
    student = uniform(gen, *shape, magnitude=magnitude)
    teacher = uniform(gen, *shape, magnitude=magnitude)
    inf = vocab_mask(gen, shape, draw(st.floats(0.0, 0.9)))
    teacher = teacher.masked_fill(inf, float("-inf"))
    if not teacher_only_inf:
        student = student.masked_fill(inf, float("-inf"))
    labels = random_labels(gen, shape[:2], shape[2], draw(st.floats(0.0, 1.0)))
    return student, teacher, labels, temperature, magnitude


def assert_finite_non_negative(values, student, labels, temperature, magnitude):
    """Per-position `values` of a loss of `student`: finite, non-negative up to rounding, 0 where ignored, and with
    finite gradients."""
    assert torch.isfinite(values).all()
    assert (values >= -tolerance(temperature, magnitude)).all()
    assert (values[labels == IGNORE_INDEX] == 0).all()
    (grad,) = torch.autograd.grad(values.sum(), student)
    assert torch.isfinite(grad).all()


def check_finite_non_negative(student, teacher, labels, temperature, magnitude, loss_type):
    student = student.clone().requires_grad_()
    values = distillation_loss(
        student, teacher, labels, loss_type=loss_type, temperature=temperature, reduction="none"
    )
    assert_finite_non_negative(values, student, labels, temperature, magnitude)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@SETTINGS
@given(case=logit_pairs())
def test_finite_and_non_negative_with_shared_inf_entries(loss_type, case):
    check_finite_non_negative(*case, loss_type)


@pytest.mark.parametrize("loss_type", TEACHER_ZEROS_OK)
@SETTINGS
@given(case=logit_pairs(teacher_only_inf=True))
def test_finite_and_non_negative_with_inf_entries_in_the_teacher_only(loss_type, case):
    check_finite_non_negative(*case, loss_type)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@SETTINGS
@given(case=logit_pairs())
def test_zero_when_teacher_equals_student(loss_type, case):
    _, teacher, labels, temperature, magnitude = case
    values = distillation_loss(
        teacher, teacher.clone(), labels, loss_type=loss_type, temperature=temperature, reduction="none"
    )
    assert (values.abs() <= tolerance(temperature, magnitude)).all()


@st.composite
def linear_cases(draw):
    """Hidden states and heads whose logits reach `magnitude`; the biases put -inf on shared vocabulary entries."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    batch, length, vocab, hidden = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 40)), 8
    magnitude = draw(magnitudes)
    inf = vocab_mask(gen, (vocab,), draw(st.floats(0.0, 0.9)))
    finite_ids = (~inf).nonzero().squeeze(-1)

    def head():
        # |h| <= 1 and |w| <= magnitude / (2 * hidden), so |h @ w.T + b| <= magnitude.
        weight = uniform(gen, vocab, hidden, magnitude=magnitude / (2 * hidden))
        return weight, uniform(gen, vocab, magnitude=magnitude / 2).masked_fill(inf, float("-inf"))

    (s_weight, s_bias), (t_weight, t_bias) = head(), head()
    labels = random_labels(gen, (batch, length), len(finite_ids), draw(st.floats(0.0, 1.0)))
    # Targets only on finite entries: a target at a -inf logit has an infinite CE in both paths.
    labels = torch.where(labels == IGNORE_INDEX, labels, finite_ids[labels.clamp(min=0)])
    inputs = {
        "student_hidden": uniform(gen, batch, length, hidden),
        "student_weight": s_weight,
        "student_bias": s_bias,
        "teacher_hidden": uniform(gen, batch, length, hidden),
        "teacher_weight": t_weight,
        "teacher_bias": t_bias,
        "labels": labels,
    }
    options = {
        "loss_type": draw(st.sampled_from(LOSS_TYPES)),
        "alpha": draw(st.sampled_from([0.0, 0.3, 1.0])),
        "temperature": draw(temperatures),
        "chunk_size": draw(st.integers(1, 8)),
    }
    return inputs, options, magnitude


def dense_reference(inputs, *, loss_type, alpha, temperature):
    labels = inputs["labels"]
    mask = labels != IGNORE_INDEX
    student = inputs["student_hidden"] @ inputs["student_weight"].T + inputs["student_bias"]
    teacher = inputs["teacher_hidden"] @ inputs["teacher_weight"].T + inputs["teacher_bias"]
    ce = F.cross_entropy(student[mask], labels[mask], reduction="sum")
    kd = distillation_loss(student, teacher, labels, loss_type=loss_type, temperature=temperature)
    return ce if alpha == 1.0 else kd if alpha == 0.0 else alpha * ce + (1 - alpha) * kd


def with_student_grad(inputs):
    return {k: v.clone().requires_grad_(k.startswith("student")) for k, v in inputs.items()}


def assert_student_grads_close(got_inputs, want_inputs, compare=True):
    """Finite gradients of the student's hidden states, weight and bias; equal to the reference's if `compare`."""
    for name in ("student_hidden", "student_weight", "student_bias"):
        got, want = got_inputs[name].grad, want_inputs[name].grad
        assert torch.isfinite(got).all()
        if compare:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * (1 + want.abs().max().item()))


@SETTINGS
@given(case=linear_cases())
def test_linear_matches_dense(case):
    inputs, options, magnitude = case
    chunk_size = options.pop("chunk_size")
    n_valid = int((inputs["labels"] != IGNORE_INDEX).sum())
    atol = tolerance(options["temperature"], magnitude) * max(n_valid, 1)
    chunked_inputs, dense_inputs = with_student_grad(inputs), with_student_grad(inputs)
    chunked = linear_distillation_loss(**chunked_inputs, chunk_size=chunk_size, **options)
    dense = dense_reference(dense_inputs, **options)
    assert torch.isfinite(chunked)
    torch.testing.assert_close(chunked, dense, rtol=1e-4, atol=atol)
    chunked.backward()
    dense.backward()
    assert_student_grads_close(chunked_inputs, dense_inputs)


@SETTINGS
@given(case=linear_cases())
def test_linear_non_negative_and_zero_against_itself(case):
    inputs, options, magnitude = case
    options["alpha"] = 0.0
    n_valid = int((inputs["labels"] != IGNORE_INDEX).sum())
    atol = tolerance(options["temperature"], magnitude) * max(n_valid, 1)
    assert linear_distillation_loss(**inputs, **options) >= -atol
    same = {**inputs, "teacher_hidden": inputs["student_hidden"]}
    same.update(teacher_weight=inputs["student_weight"], teacher_bias=inputs["student_bias"])
    assert linear_distillation_loss(**same, **options).abs() <= atol


def full_topk(teacher_logits: torch.Tensor) -> TopKTeacher:
    """The teacher's whole distribution as a top-k with K = V, and an empty tail."""
    logprobs, ids = F.log_softmax(teacher_logits.float(), dim=-1).topk(teacher_logits.shape[-1], dim=-1)
    return TopKTeacher(ids, logprobs, torch.full(teacher_logits.shape[:-1], float("-inf")))


@SETTINGS
@given(case=logit_pairs(), loss_type=st.sampled_from(LOSS_TYPES), mode=st.sampled_from(EVERY_LOSS_TYPE_MODES))
def test_sparse_with_full_vocabulary_matches_dense(case, loss_type, mode):
    student, teacher, labels, temperature, magnitude = case
    topk = full_topk(teacher)
    options = {"loss_type": loss_type, "temperature": temperature, "reduction": "none"}
    sparse = sparse_distillation_loss(
        student, topk.ids, topk.logprobs, labels, tail_logprob=topk.tail, mode=mode, **options
    )
    dense = distillation_loss(student, teacher, labels, **options)
    assert torch.isfinite(sparse).all()
    assert (sparse >= -tolerance(temperature, magnitude)).all()
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=tolerance(temperature, magnitude))


@SETTINGS
@given(case=linear_cases(), mode=st.sampled_from(EVERY_LOSS_TYPE_MODES))
def test_dense_chunked_and_chunked_sparse_agree(case, mode):
    """dense == chunked == chunked with the teacher as a top-k of K = V, in value and student gradients."""
    inputs, options, magnitude = case
    n_valid = int((inputs["labels"] != IGNORE_INDEX).sum())
    atol = tolerance(options["temperature"], magnitude) * max(n_valid, 1)
    teacher_logits = inputs["teacher_hidden"] @ inputs["teacher_weight"].T + inputs["teacher_bias"]
    student_only = {k: v for k, v in inputs.items() if not k.startswith("teacher")}
    sparse_inputs, dense_inputs = with_student_grad(student_only), with_student_grad(inputs)
    sparse = linear_distillation_loss(
        **sparse_inputs, teacher_hidden=None, teacher_weight=None, teacher_topk=full_topk(teacher_logits),
        sparse_mode=mode, **options,
    )  # fmt: skip
    chunked = linear_distillation_loss(**with_student_grad(inputs), **options)
    options.pop("chunk_size")
    dense = dense_reference(dense_inputs, **options)
    assert torch.isfinite(sparse)
    torch.testing.assert_close(chunked, dense, rtol=1e-4, atol=atol)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=atol)
    sparse.backward()
    dense.backward()
    # TVD's gradient jumps where p_T = p_S; entries that equal up to float32 rounding may take either side.
    assert_student_grads_close(sparse_inputs, dense_inputs, compare=options["loss_type"] != "tvd")


def topk_teacher(teacher_logits: torch.Tensor, k: int) -> TopKTeacher:
    """The teacher's top-k and the true log-mass of the other V - k tokens, summed in float64 (the cache's
    `log1p(-sum(top-k))` rounds a tail below float32's epsilon to -inf, which is not the tail of these logits)."""
    log_p = F.log_softmax(teacher_logits.double(), dim=-1)
    logprobs, ids = log_p.topk(k, dim=-1)
    tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1)
    return TopKTeacher(ids, logprobs.float(), tail.float())


@st.composite
def sparse_cases(draw):
    """A `logit_pairs` case with its teacher cut to a real top-k: K drawn from [1, V - 1], so a tail always remains."""
    student, teacher, labels, temperature, magnitude = draw(logit_pairs())
    k = draw(st.integers(1, teacher.shape[-1] - 1))
    return student, teacher, topk_teacher(teacher, k), labels, temperature, magnitude


def sparse_values(student, topk, labels, temperature, mode, loss_type):
    return sparse_distillation_loss(
        student, topk.ids, topk.logprobs, labels, tail_logprob=topk.tail, mode=mode, loss_type=loss_type,
        temperature=temperature, reduction="none",
    )  # fmt: skip


@pytest.mark.parametrize("mode", EVERY_LOSS_TYPE_MODES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@SETTINGS
@given(case=sparse_cases())
def test_sparse_topk_finite_and_non_negative(mode, loss_type, case):
    student, _, topk, labels, temperature, magnitude = case
    student = student.clone().requires_grad_()
    values = sparse_values(student, topk, labels, temperature, mode, loss_type)
    assert_finite_non_negative(values, student, labels, temperature, magnitude)


@pytest.mark.parametrize("mode", EVERY_LOSS_TYPE_MODES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@SETTINGS
@given(case=sparse_cases(), at_one=st.booleans())
def test_sparse_topk_with_the_teachers_own_logits(mode, loss_type, case, at_one):
    """The student's logits are the teacher's, z; K ids of the top-k, the other V - K the tail.

    renormalized: both sides are softmax(z_K / T) (the teacher's log-probabilities are z_K minus one constant), so
    the loss is 0 at every T.

    tail_bucket: both sides share exp(z_i / T) on the K ids (up to one factor), but the buckets differ: the
    student's is its true tempered tail, sum_tail exp(z_j / T), the teacher's its tail mass tempered as one token,
    (sum_tail exp(z_j))**(1 / T). These are equal at T = 1 or when the tail is one token, and then the loss is 0;
    otherwise they differ (for T > 1 the student's bucket is the heavier) and the loss is the divergence between the
    two (K + 1)-point distributions of logits [z_K, T * logsumexp(z_tail / T)] and [z_K, logsumexp(z_tail)] at
    temperature T, which the test computes with `distillation_loss`.
    """
    _, teacher, topk, labels, temperature, magnitude = case
    temperature = 1.0 if at_one else temperature
    atol = tolerance(temperature, magnitude)
    values = sparse_values(teacher.clone(), topk, labels, temperature, mode, loss_type)
    if mode == "renormalized":
        assert (values.abs() <= atol).all()
        return
    z = teacher.double()
    tail = z.scatter(-1, topk.ids, float("-inf"))
    student_bucket = temperature * torch.logsumexp(tail / temperature, dim=-1, keepdim=True)
    teacher_bucket = torch.logsumexp(tail, dim=-1, keepdim=True)
    expected = distillation_loss(
        torch.cat([z.gather(-1, topk.ids), student_bucket], dim=-1),
        torch.cat([z.gather(-1, topk.ids), teacher_bucket], dim=-1),
        labels, loss_type=loss_type, temperature=temperature, reduction="none",
    )  # fmt: skip
    torch.testing.assert_close(values, expected, rtol=1e-4, atol=atol)
    if at_one or teacher.shape[-1] - topk.ids.shape[-1] == 1:
        assert (values.abs() <= atol).all()
