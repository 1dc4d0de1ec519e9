"""`linear_distillation_loss` against the dense path: logits built explicitly, then the module's dense losses."""

import pytest
import torch
import torch.nn.functional as F

from hf_distill.losses import (
    IGNORE_INDEX,
    LOSS_TYPES,
    DivergenceSpec,
    LMHead,
    TeacherHeads,
    distillation_loss,
    fused_distillation_loss,
    linear_distillation_loss,
)

B, L, H_S, H_T, V = 2, 13, 16, 24, 40
TOL = {"rtol": 1e-5, "atol": 1e-5}


def make_inputs(seed=0, *, v_student=V, v_teacher=V + 64, n_masked=6, bias=True, dtype=torch.float32):
    """Student and teacher heads of different hidden widths; the teacher's vocabulary is padded by 64 rows."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    labels = torch.randint(0, v_student, (B, L), generator=gen)
    labels.view(-1)[torch.randperm(B * L, generator=gen)[:n_masked]] = IGNORE_INDEX
    return {
        "student_hidden": randn(B, L, H_S).requires_grad_(),
        "student_weight": randn(v_student, H_S, scale=0.5).requires_grad_(),
        "student_bias": randn(v_student).requires_grad_() if bias else None,
        "teacher_hidden": randn(B, L, H_T),
        "teacher_weight": randn(v_teacher, H_T, scale=0.5),
        "teacher_bias": randn(v_teacher) if bias else None,
        "labels": labels,
    }


def logits(hidden, weight, bias, scale=1.0, softcap=None):
    out = hidden.float() @ weight.float().T
    if bias is not None:
        out = out + bias.float()
    out = out * scale
    if softcap is not None:
        out = softcap * torch.tanh(out / softcap)
    return out


def dense_loss(inputs, *, alpha=0.5, reduction="sum", logit_scales=(1.0, 1.0), softcaps=(None, None), **options):
    """The reference: full logits, `F.cross_entropy` and `distillation_loss`, mixed like the trainer mixes them."""
    labels = inputs["labels"]
    mask = labels != IGNORE_INDEX
    student = logits(
        inputs["student_hidden"], inputs["student_weight"], inputs["student_bias"], logit_scales[0], softcaps[0]
    )
    ce = torch.zeros(labels.shape)
    ce[mask] = F.cross_entropy(student[mask], labels[mask], reduction="none")
    if alpha == 1.0:
        values = ce
    else:
        teacher = logits(
            inputs["teacher_hidden"], inputs["teacher_weight"], inputs["teacher_bias"], logit_scales[1], softcaps[1]
        )
        vocab = min(student.shape[-1], teacher.shape[-1])
        kd = distillation_loss(student[..., :vocab], teacher[..., :vocab], labels, reduction="none", **options)
        values = kd if alpha == 0.0 else alpha * ce + (1 - alpha) * kd
    if reduction == "none":
        return values
    total = values.sum()
    return total / mask.sum().clamp(min=1) if reduction == "mean" else total


def chunked_loss(inputs, *, logit_scales=(1.0, 1.0), softcaps=(None, None), **options):
    return linear_distillation_loss(
        **inputs,
        student_logit_scale=logit_scales[0],
        teacher_logit_scale=logit_scales[1],
        student_softcap=softcaps[0],
        teacher_softcap=softcaps[1],
        **options,
    )


def fused_terms(inputs, *, alpha, chunk_size, loss_type="forward_kl", temperature=1.0):
    """`fused_distillation_loss`, the entry point the trainer calls, on `linear_distillation_loss`'s tensors."""
    teacher = None
    if inputs["teacher_hidden"] is not None:
        teacher = TeacherHeads([inputs["teacher_hidden"]], [LMHead(inputs["teacher_weight"], inputs["teacher_bias"])])
    student = LMHead(inputs["student_weight"], inputs["student_bias"])
    spec = DivergenceSpec(loss_type=loss_type, temperature=temperature, alpha=alpha)
    return fused_distillation_loss(inputs["student_hidden"], student, teacher, inputs["labels"], spec, chunk_size)


def student_grads(loss, inputs):
    params = [inputs[k] for k in ("student_hidden", "student_weight", "student_bias") if inputs[k] is not None]
    return torch.autograd.grad(loss, params)


def assert_matches_dense(inputs, *, chunk_size, upstream=None, **options):
    """Same value and same gradients (w.r.t. student hidden, weight, bias) as the dense path."""
    chunked, dense = chunked_loss(inputs, chunk_size=chunk_size, **options), dense_loss(inputs, **options)
    torch.testing.assert_close(chunked, dense, **TOL)
    if upstream is None:
        upstream = torch.ones_like(dense)
    for got, want in zip(
        student_grads((chunked * upstream).sum(), inputs), student_grads((dense * upstream).sum(), inputs)
    ):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_and_alpha_matches_dense(loss_type, alpha):
    # 20 valid positions in chunks of 6: the last chunk is partial.
    assert_matches_dense(make_inputs(), loss_type=loss_type, alpha=alpha, temperature=2.0, chunk_size=6)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 20, 1000])
def test_chunk_sizes_that_do_and_do_not_divide_the_valid_count(chunk_size):
    inputs = make_inputs(seed=1)
    assert (inputs["labels"] != IGNORE_INDEX).sum() == 20
    assert_matches_dense(inputs, loss_type="jsd", temperature=0.7, chunk_size=chunk_size)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_softcap_logit_scale_and_temperature(loss_type):
    assert_matches_dense(
        make_inputs(seed=2),
        loss_type=loss_type,
        alpha=0.3,
        temperature=1.7,
        logit_scales=(0.8, 1.3),
        softcaps=(3.0, 2.5),
        chunk_size=3,
    )


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "tvd"])
def test_mean_and_none_reductions(loss_type):
    inputs = make_inputs(seed=3)
    assert_matches_dense(inputs, loss_type=loss_type, reduction="mean", temperature=2.0, chunk_size=7)
    # Per-position upstream weights: the backward pass must weight every position separately.
    upstream = torch.rand(B, L, generator=torch.Generator().manual_seed(0))
    assert_matches_dense(
        inputs, upstream=upstream, loss_type=loss_type, reduction="none", temperature=2.0, chunk_size=7
    )
    none = chunked_loss(inputs, loss_type=loss_type, reduction="none", chunk_size=7)
    assert none.shape == (B, L)
    assert (none[inputs["labels"] == IGNORE_INDEX] == 0).all()


def test_no_bias_and_student_vocabulary_wider_than_teacher():
    # Divergence on the first V - 8 entries, CE over the student's full V.
    inputs = make_inputs(seed=4, v_teacher=V - 8, bias=False)
    assert_matches_dense(inputs, loss_type="skew_reverse_kl", chunk_size=8)


def test_upstream_gradient_scales_the_precomputed_gradients():
    inputs = make_inputs(seed=5)
    assert_matches_dense(inputs, upstream=torch.tensor(3.7), loss_type="forward_kl", chunk_size=4)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_all_masked_is_zero_with_zero_finite_gradients(reduction, alpha):
    inputs = make_inputs(seed=6, n_masked=B * L)
    loss = chunked_loss(inputs, alpha=alpha, reduction=reduction, chunk_size=4)
    assert (loss == 0).all()
    for grad in student_grads(loss.sum(), inputs):
        assert torch.isfinite(grad).all()
        assert (grad == 0).all()


def test_bf16_inputs_are_close_to_the_float32_answer_and_get_bf16_gradients():
    inputs = make_inputs(seed=7, dtype=torch.bfloat16)
    as_float = {
        k: None if v is None else v.detach().float().requires_grad_(v.requires_grad) for k, v in inputs.items()
    }
    as_float["labels"] = inputs["labels"]
    options = {"loss_type": "jsd", "alpha": 0.3, "temperature": 2.0}
    loss = chunked_loss(inputs, chunk_size=6, **options)
    # The maths runs in float32, so only the rounding of the returned gradients to bf16 separates the two.
    torch.testing.assert_close(loss, dense_loss(as_float, **options), **TOL)
    grads = student_grads(loss, inputs)
    for got, want in zip(grads, student_grads(dense_loss(as_float, **options), as_float)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-3)


def test_frozen_weight_and_no_grad():
    inputs = make_inputs(seed=8)
    inputs["student_weight"].requires_grad_(False)
    loss = chunked_loss(inputs, chunk_size=5)
    (grad_hidden,) = torch.autograd.grad(loss, [inputs["student_hidden"]], retain_graph=False, allow_unused=False)
    dense = dense_loss(inputs)
    torch.testing.assert_close(grad_hidden, torch.autograd.grad(dense, [inputs["student_hidden"]])[0], **TOL)
    with torch.no_grad():
        torch.testing.assert_close(chunked_loss(inputs, chunk_size=5), dense, **TOL)


def test_terms_report_ce_and_kd_sums():
    inputs = make_inputs(seed=9)
    options = {"loss_type": "reverse_kl", "temperature": 2.0}
    terms = fused_terms(inputs, alpha=0.3, chunk_size=6, **options)
    torch.testing.assert_close(terms.ce.sum(), dense_loss(inputs, alpha=1.0, **options).detach(), **TOL)
    torch.testing.assert_close(terms.kd.sum(), dense_loss(inputs, alpha=0.0, **options).detach(), **TOL)
    assert terms.mask.sum() == 20 and terms.ce.shape == terms.kd.shape == (20,)
    assert not terms.ce.requires_grad and not terms.kd.requires_grad
    torch.testing.assert_close(terms.loss, 0.3 * terms.ce.sum() + 0.7 * terms.kd.sum(), **TOL)
    for got, want in zip(
        student_grads(terms.loss, inputs), student_grads(dense_loss(inputs, alpha=0.3, **options), inputs)
    ):
        torch.testing.assert_close(got, want, **TOL)


def test_terms_count_top1_agreement_against_full_logits():
    """Agreement of the fused path: the student's and the teacher's argmax over the shared vocabulary, from explicit
    logits."""
    inputs = make_inputs(seed=15)
    terms = fused_terms(inputs, alpha=0.5, chunk_size=4, temperature=3.0)
    mask = inputs["labels"] != IGNORE_INDEX
    student = logits(inputs["student_hidden"], inputs["student_weight"], inputs["student_bias"])
    teacher = logits(inputs["teacher_hidden"], inputs["teacher_weight"], inputs["teacher_bias"])
    expected = (student[..., :V].argmax(-1) == teacher[..., :V].argmax(-1))[mask].float()
    assert 0 < expected.sum() < len(expected)
    torch.testing.assert_close(terms.agree, expected, rtol=0, atol=0)


def test_terms_alpha_zero_still_reports_ce():
    inputs = make_inputs(seed=10)
    terms = fused_terms(inputs, alpha=0.0, chunk_size=6)
    torch.testing.assert_close(terms.ce.sum(), dense_loss(inputs, alpha=1.0).detach(), **TOL)
    torch.testing.assert_close(terms.loss, terms.kd.sum(), **TOL)


def test_alpha_one_needs_no_teacher():
    inputs = make_inputs(seed=11)
    with_teacher = fused_terms(inputs, alpha=1.0, chunk_size=6)
    inputs.update(teacher_hidden=None, teacher_weight=None, teacher_bias=None)
    terms = fused_terms(inputs, alpha=1.0, chunk_size=6)
    assert terms.kd.sum() == 0 and terms.agree.sum() == 0
    torch.testing.assert_close(terms.loss, with_teacher.loss, rtol=0, atol=0)
    torch.testing.assert_close(terms.loss, dense_loss(inputs, alpha=1.0), **TOL)


def test_alpha_one_skips_the_teacher_projection(monkeypatch):
    inputs = make_inputs(seed=12)
    widths = []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda x, *args: widths.append(x.shape[-1]) or linear(x, *args))
    linear_distillation_loss(**inputs, alpha=1.0, chunk_size=6).backward()
    assert widths and set(widths) == {H_S}


def test_teacher_gets_no_gradient():
    inputs = make_inputs(seed=13)
    inputs["teacher_hidden"].requires_grad_()
    inputs["teacher_weight"].requires_grad_()
    linear_distillation_loss(**inputs, chunk_size=6).backward()
    assert inputs["teacher_hidden"].grad is None and inputs["teacher_weight"].grad is None


def test_second_backward_is_refused():
    inputs = make_inputs(seed=14)
    loss = linear_distillation_loss(**inputs, chunk_size=6)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated twice"):
        loss.backward()


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True, "8"])
def test_chunk_size_must_be_a_positive_int(chunk_size):
    with pytest.raises(ValueError, match=f"chunk_size={chunk_size!r}"):
        linear_distillation_loss(**make_inputs(), chunk_size=chunk_size)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"student_hidden": torch.zeros(B, L + 1, H_S)}, "student_hidden"),
        ({"teacher_hidden": torch.zeros(B, L, H_T + 1)}, "teacher_weight"),
        ({"student_weight": torch.zeros(V, H_S + 1)}, "student_weight"),
        ({"student_bias": torch.zeros(V + 1)}, "student_bias"),
        ({"teacher_bias": torch.zeros(3)}, "teacher_bias"),
        ({"teacher_hidden": None}, "needs teacher_hidden"),
        ({"labels": torch.zeros(B, L)}, "labels"),
    ],
)
def test_shape_and_argument_errors(change, message):
    inputs = make_inputs()
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        linear_distillation_loss(**inputs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"loss_type": "kl"}, "loss_type='kl'"),
        ({"reduction": "avg"}, "reduction='avg'"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"student_softcap": 0.0}, "student_softcap=0.0"),
        ({"teacher_softcap": -1.0}, "teacher_softcap=-1.0"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        linear_distillation_loss(**make_inputs(), **options)


@pytest.mark.parametrize("mode", ["mean_probs", "mean_logprobs"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_teacher_ensemble_matches_dense(mode, loss_type):
    """Two teacher heads of other widths, vocabularies, biases and soft-caps, weighted 1 : 3, against explicit
    probability tables: mean of probabilities or renormalised geometric mean of the softened members."""
    inputs = make_inputs(5)
    gen = torch.Generator().manual_seed(11)
    hidden = [inputs["teacher_hidden"], torch.randn(B, L, 8, generator=gen)]
    heads = [
        LMHead(inputs["teacher_weight"], inputs["teacher_bias"]),
        LMHead(torch.randn(V + 3, 8, generator=gen), None, 1.0, 3.0),
    ]
    temperature = 1.5
    options = dict(alpha=0.4, loss_type=loss_type, temperature=temperature, beta=0.3, skew_lambda=0.2)
    chunked = fused_distillation_loss(
        inputs["student_hidden"], LMHead(inputs["student_weight"], inputs["student_bias"]),
        TeacherHeads(hidden, heads, [0.25, 0.75], mode), inputs["labels"], DivergenceSpec(**options), chunk_size=4,
    ).loss  # fmt: skip
    chunked_grads = torch.autograd.grad(chunked, [inputs[k] for k in ("student_hidden", "student_weight")])

    labels = inputs["labels"]
    student = logits(inputs["student_hidden"], inputs["student_weight"], inputs["student_bias"])
    probs = [
        torch.softmax(logits(h, head.weight, head.bias, softcap=head.softcap)[..., :V] / temperature, -1)
        for h, head in zip(hidden, heads)
    ]
    if mode == "mean_probs":
        combined = 0.25 * probs[0] + 0.75 * probs[1]
    else:
        combined = probs[0] ** 0.25 * probs[1] ** 0.75
        combined = combined / combined.sum(-1, keepdim=True)
    mask = labels != IGNORE_INDEX
    ce = F.cross_entropy(student[mask], labels[mask], reduction="sum")
    kd_options = {k: v for k, v in options.items() if k != "alpha"}
    kd = distillation_loss(student, temperature * combined.log(), labels, **kd_options)
    dense = 0.4 * ce + 0.6 * kd
    dense_grads = torch.autograd.grad(dense, [inputs[k] for k in ("student_hidden", "student_weight")])
    torch.testing.assert_close(chunked, dense, **TOL)
    for got, expected in zip(chunked_grads, dense_grads):
        torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_autocast_leaves_the_float32_maths_alone(dtype, reduction):
    """Under `torch.autocast` (as Trainer runs a bf16/fp16 step) the chunk maths stays float32: the same value and
    gradients as without autocast (before: bf16 refused the in-place products, fp16 overflowed on the log floor)."""
    inputs = make_inputs(seed=16)
    plain = chunked_loss(inputs, chunk_size=5, reduction=reduction, temperature=2.0)
    plain_grads = student_grads(plain.sum(), inputs)
    with torch.autocast("cpu", dtype=dtype):
        autocast = chunked_loss(inputs, chunk_size=5, reduction=reduction, temperature=2.0)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=0, atol=0)
    for got, want in zip(student_grads(autocast.sum(), inputs), plain_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
