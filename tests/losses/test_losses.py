"""The divergences against independent formulas on explicit probability tables."""

import pytest
import torch
import torch.nn.functional as F

from hf_distill import DistillConfig
from hf_distill.losses import (
    LOSS_TYPES,
    DivergenceSpec,
    TeacherLogits,
    cross_entropy_loss,
    dense_distillation_terms,
    distillation_loss,
)


def _inputs(seed=0, batch=3, length=5, vocab=13):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=gen) * 2
    teacher = torch.randn(batch, length, vocab, generator=gen) * 2
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[0, :2] = -100
    labels[2, -1] = -100
    return student, teacher, labels


def _kl(p, q):
    """KL(p || q) per row with torch's own kl_div (input = log q, target = p)."""
    return F.kl_div(q.log(), p, reduction="none").sum(-1)


def _reference(student, teacher, labels, loss_type, temperature, beta=0.5, skew_lambda=0.1):
    """Per-valid-position divergence from explicit softmax tables, one formula per loss type."""
    mask = labels != -100
    p_s = torch.softmax(student[mask].double() / temperature, -1)
    p_t = torch.softmax(teacher[mask].double() / temperature, -1)
    if loss_type == "forward_kl":
        d = _kl(p_t, p_s)
    elif loss_type == "reverse_kl":
        d = _kl(p_s, p_t)
    elif loss_type in ("jsd", "gjsd"):
        m = beta * p_t + (1 - beta) * p_s
        d = beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)
        if loss_type == "gjsd" and beta in (0, 1):
            d = _kl(p_t, p_s) if beta == 0 else _kl(p_s, p_t)
    elif loss_type == "skew_forward_kl":
        d = _kl(p_t, skew_lambda * p_t + (1 - skew_lambda) * p_s)
    elif loss_type == "skew_reverse_kl":
        d = _kl(p_s, skew_lambda * p_s + (1 - skew_lambda) * p_t)
    else:
        d = 0.5 * (p_t - p_s).abs().sum(-1)
    return d * temperature**2


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_independent_formula(loss_type, temperature):
    student, teacher, labels = _inputs()
    expected = _reference(student, teacher, labels, loss_type, temperature, beta=0.3, skew_lambda=0.2)
    got = distillation_loss(
        student, teacher, labels, loss_type=loss_type, temperature=temperature, beta=0.3, skew_lambda=0.2
    )
    torch.testing.assert_close(got.double(), expected.sum(), rtol=1e-6, atol=1e-6)
    per_position = distillation_loss(
        student,
        teacher,
        labels,
        loss_type=loss_type,
        temperature=temperature,
        beta=0.3,
        skew_lambda=0.2,
        reduction="none",
    )
    mask = labels != -100
    assert per_position.shape == labels.shape
    assert torch.all(per_position[~mask] == 0)
    torch.testing.assert_close(per_position[mask].double(), expected, rtol=1e-6, atol=1e-6)
    mean = distillation_loss(
        student,
        teacher,
        labels,
        loss_type=loss_type,
        temperature=temperature,
        beta=0.3,
        skew_lambda=0.2,
        reduction="mean",
    )
    torch.testing.assert_close(mean.double(), expected.mean(), rtol=1e-6, atol=1e-6)


def test_forward_kl_equals_kl_div_with_log_target():
    student, teacher, labels = _inputs(seed=3)
    mask = labels != -100
    log_s = F.log_softmax(student[mask] / 2.0, -1)
    log_t = F.log_softmax(teacher[mask] / 2.0, -1)
    expected = F.kl_div(log_s, log_t, log_target=True, reduction="sum") * 4.0
    got = distillation_loss(student, teacher, labels, temperature=2.0)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_identical_distributions_give_zero(loss_type):
    student, _, labels = _inputs()
    got = distillation_loss(student, student.clone(), labels, loss_type=loss_type, temperature=3.0)
    assert abs(got.item()) < 1e-5


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_temperature_squared_scaling(loss_type):
    student, teacher, labels = _inputs()
    # Scaling the logits by T and the temperature by T leaves the distributions unchanged: only the T**2 factor moves.
    base = distillation_loss(student, teacher, labels, loss_type=loss_type, temperature=1.0)
    scaled = distillation_loss(student * 4, teacher * 4, labels, loss_type=loss_type, temperature=4.0)
    torch.testing.assert_close(scaled, base * 16, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_masked_positions_do_not_count(loss_type):
    student, teacher, labels = _inputs()
    mask = labels != -100
    noisy = student.clone()
    noisy[~mask] = 1e4 * torch.randn_like(noisy[~mask])
    torch.testing.assert_close(
        distillation_loss(noisy, teacher, labels, loss_type=loss_type),
        distillation_loss(student, teacher, labels, loss_type=loss_type),
    )


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_all_masked_gives_zero_and_finite_gradients(loss_type):
    student, teacher, labels = _inputs()
    student.requires_grad_(True)
    labels = torch.full_like(labels, -100)
    for reduction in ("sum", "mean"):
        loss = distillation_loss(student, teacher, labels, loss_type=loss_type, reduction=reduction)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.all(grad == 0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_bf16_inputs_give_float32_answer(loss_type):
    student, teacher, labels = _inputs()
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    got = distillation_loss(s16, t16, labels, loss_type=loss_type)
    assert got.dtype == torch.float32
    # Same answer as float32 on the bf16-rounded logits: the maths itself runs in float32.
    torch.testing.assert_close(got, distillation_loss(s16.float(), t16.float(), labels, loss_type=loss_type))
    torch.testing.assert_close(
        got, distillation_loss(student, teacher, labels, loss_type=loss_type), rtol=0.05, atol=0.05
    )


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_negative_infinity_logits_stay_finite(loss_type):
    student, teacher, labels = _inputs()
    student[..., :3] = float("-inf")
    teacher[..., :3] = float("-inf")
    student.requires_grad_(True)
    loss = distillation_loss(student, teacher, labels, loss_type=loss_type, temperature=2.0)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and loss.item() >= -1e-6
    assert torch.isfinite(grad).all()
    finite = distillation_loss(student[..., 3:], teacher[..., 3:], labels, loss_type=loss_type, temperature=2.0)
    torch.testing.assert_close(loss, finite)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_near_one_hot_teacher(loss_type):
    student, teacher, labels = _inputs()
    teacher = torch.full_like(teacher, -1e4)
    teacher[..., 0] = 1e4
    student.requires_grad_(True)
    loss = distillation_loss(student, teacher, labels, loss_type=loss_type)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and loss.item() >= -1e-6
    assert torch.isfinite(grad).all()


def test_cross_entropy_helper():
    student, _, labels = _inputs()
    mask = labels != -100
    expected = F.cross_entropy(student.reshape(-1, 13), labels.reshape(-1), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(cross_entropy_loss(student, labels), expected)
    torch.testing.assert_close(cross_entropy_loss(student, labels, reduction="mean"), expected / mask.sum())
    assert cross_entropy_loss(student, torch.full_like(labels, -100), reduction="mean").item() == 0.0


def test_dense_terms_count_teacher_agreement_at_valid_positions():
    student, teacher, labels = _inputs()
    spec = DivergenceSpec(temperature=2.0)
    itself = dense_distillation_terms(student, TeacherLogits([student]), labels, spec)
    assert itself.agree.sum().item() == (labels != -100).sum().item()
    mask = labels != -100
    expected = (student.argmax(-1) == teacher.argmax(-1))[mask].float()
    terms = dense_distillation_terms(student, TeacherLogits([teacher]), labels, spec)
    assert 0 < expected.sum() < mask.sum()
    assert torch.equal(terms.agree, expected)
    assert torch.equal(
        terms.per_example()["agree"], (student.argmax(-1) == teacher.argmax(-1)).mul(mask).sum(-1).float()
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"loss_type": "kl"}, "loss_type"),
        ({"temperature": 0.0}, "temperature"),
        ({"loss_type": "jsd", "beta": 1.0}, "beta"),
        ({"loss_type": "skew_forward_kl", "skew_lambda": 1.0}, "skew_lambda"),
        ({"reduction": "avg"}, "reduction"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    student, teacher, labels = _inputs()
    with pytest.raises(ValueError, match=field):
        distillation_loss(student, teacher, labels, **kwargs)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gjsd_equals_trl_generalized_jsd_loss(beta, temperature):
    """TRL's convention (its `generalized_jsd_loss`, endpoints included: 0 forward KL, 1 reverse KL): hf_distill's
    sum over valid positions is TRL's sum times T**2 (TRL leaves the T**2 factor out)."""
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    student, teacher, labels = _inputs(3)
    ours = distillation_loss(student, teacher, labels, loss_type="gjsd", beta=beta, temperature=temperature)
    theirs = gkd.GKDTrainer.generalized_jsd_loss(
        student, teacher, labels, beta=beta, temperature=temperature, reduction="sum"
    )
    torch.testing.assert_close(ours, theirs * temperature**2, rtol=1e-5, atol=1e-5)


def test_beta_with_a_loss_type_that_ignores_it_is_refused(tmp_path):
    message = (
        r"^beta that would be ignored \(beta=1.0, loss_type='forward_kl'\): beta is read by loss_type 'jsd' and "
        r"'gjsd' only, and loss_type='forward_kl' would ignore it; remove beta, or use loss_type: gjsd"
    )
    with pytest.raises(ValueError, match=message):
        DistillConfig(output_dir=str(tmp_path), beta=1.0)
    student, teacher, labels = _inputs()
    with pytest.raises(ValueError, match="beta must be in \\[0, 1\\] for loss_type='gjsd', got beta=1.5"):
        distillation_loss(student, teacher, labels, loss_type="gjsd", beta=1.5)
