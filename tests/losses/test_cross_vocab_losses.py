"""Cross-vocabulary losses (hf_distill.losses.cross_vocab) against independent float64 computations."""

import pytest
import torch
import torch.nn.functional as F
from testing_utils import other_demo_tokenizer, word_tokenizer

from hf_distill.losses import (
    LOSS_TYPES,
    CrossVocabTeacher,
    DivergenceSpec,
    VocabularyMap,
    dense_distillation_terms,
    distillation_loss,
    uld_distance,
)
from hf_distill.losses.cross_vocab import aligned_divergence
from hf_distill.teachers.shared_vocabulary import shared_vocabulary


def _reference_uld(p_s, p_t):
    """The paper's formula, row by row: sort each distribution decreasingly, pad the shorter with zeros, L1."""
    out = []
    for a, b in zip(p_s.tolist(), p_t.tolist()):
        a, b = sorted(a, reverse=True), sorted(b, reverse=True)
        width = max(len(a), len(b))
        a, b = a + [0.0] * (width - len(a)), b + [0.0] * (width - len(b))
        out.append(sum(abs(x - y) for x, y in zip(a, b)))
    return torch.tensor(out, dtype=torch.float64)


def test_uld_matches_the_papers_formula():
    gen = torch.Generator().manual_seed(0)
    log_s = torch.randn(4, 7, generator=gen, dtype=torch.float64).log_softmax(-1)
    log_t = torch.randn(4, 11, generator=gen, dtype=torch.float64).log_softmax(-1)
    torch.testing.assert_close(uld_distance(log_s, log_t), _reference_uld(log_s.exp(), log_t.exp()))
    # Symmetric in its arguments, and 0 for distributions that are permutations of each other.
    torch.testing.assert_close(uld_distance(log_t, log_s), _reference_uld(log_s.exp(), log_t.exp()))
    assert uld_distance(log_s, log_s.flip(-1)).abs().max() < 1e-12


def _batch(student_vocab=13, teacher_vocab=17, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 6, student_vocab, generator=gen) * 2
    teacher = torch.randn(2, 8, teacher_vocab, generator=gen) * 2
    labels = torch.randint(0, student_vocab, (2, 6), generator=gen)
    labels[0, :2] = -100
    # Spans start at student positions 2, 4, 5 of row 0 and 0, 3 of row 1 (all targets); teacher positions anywhere.
    student_pos = torch.tensor([[2, 4, 5], [0, 3, -1]])
    teacher_pos = torch.tensor([[1, 5, 7], [2, 6, -1]])
    return student, teacher, labels, student_pos, teacher_pos


def _partial_vocab(student_vocab=13, teacher_vocab=17):
    return VocabularyMap(torch.tensor([0, 2, 3, 7, 12]), torch.tensor([16, 1, 4, 3, 0]), student_vocab, teacher_vocab)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_terms_sit_at_span_starts_and_match_a_direct_computation(temperature):
    student, teacher, labels, s_pos, t_pos = _batch()
    spec = DivergenceSpec(temperature=temperature, alpha=0.3)
    cross = CrossVocabTeacher(teacher, s_pos, t_pos, _partial_vocab(), "uld")
    terms = dense_distillation_terms(student, cross, labels, spec)
    expected = torch.zeros(2, 6, dtype=torch.float64)
    for row in range(2):
        for s, t in zip(s_pos[row].tolist(), t_pos[row].tolist()):
            if s >= 0:
                p_s = torch.softmax(student[row, s].double() / temperature, -1)
                p_t = torch.softmax(teacher[row, t].double() / temperature, -1)
                expected[row, s] = _reference_uld(p_s[None], p_t[None])[0] * temperature**2
    mask = labels != -100
    torch.testing.assert_close(terms.kd.double(), expected[mask], atol=1e-6, rtol=1e-5)
    ce = F.cross_entropy(student[mask].double(), labels[mask], reduction="none")
    torch.testing.assert_close(terms.ce.double(), ce, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(terms.loss.double(), (0.3 * ce + 0.7 * expected[mask]).sum(), atol=1e-5, rtol=1e-5)


def test_uld_is_zero_for_identical_models():
    student, _, labels, s_pos, _ = _batch()
    vocab = VocabularyMap(torch.arange(13), torch.arange(13), 13, 13)
    terms = dense_distillation_terms(
        student, CrossVocabTeacher(student.clone(), s_pos, s_pos, vocab, "uld"), labels, DivergenceSpec(alpha=0.0)
    )
    assert terms.kd.abs().max() == 0
    assert terms.agree.sum() == (s_pos >= 0).sum()  # top-1 agrees at every span


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_aligned_with_one_tokenizer_is_the_same_vocabulary_divergence(loss_type):
    tokenizer = word_tokenizer()
    vocab = shared_vocabulary(tokenizer, tokenizer, len(tokenizer), len(tokenizer))
    assert vocab.covers_both()
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(2, 5, len(tokenizer), generator=gen)
    teacher = torch.randn(2, 5, len(tokenizer), generator=gen)
    labels = torch.randint(0, len(tokenizer), (2, 5), generator=gen)
    labels[1, 0] = -100
    # One span per target token, at the same position on both sides: what one tokenizer on both sides aligns to.
    positions = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, -1]])
    spec = DivergenceSpec(loss_type=loss_type, temperature=2.0, beta=0.3 if "jsd" in loss_type else 0.5, alpha=0.0)
    cross = CrossVocabTeacher(teacher, positions, positions, vocab, "aligned")
    terms = dense_distillation_terms(student, cross, labels, spec)
    expected = distillation_loss(
        student, teacher, labels, loss_type=loss_type, temperature=2.0, beta=spec.beta, reduction="none"
    )
    assert torch.equal(terms.kd, expected[labels != -100])


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl"])
def test_aligned_on_a_partial_vocabulary_matches_a_direct_computation(loss_type):
    gen = torch.Generator().manual_seed(2)
    log_s = (torch.randn(3, 13, generator=gen) * 2).log_softmax(-1)
    log_t = (torch.randn(3, 17, generator=gen) * 2).log_softmax(-1)
    vocab = _partial_vocab()
    got = aligned_divergence(log_s, log_t, vocab, DivergenceSpec(loss_type=loss_type), uld_weight=0.4)
    p_s, p_t = log_s.double().exp(), log_t.double().exp()
    shared_s, shared_t = p_s[:, vocab.student_ids], p_t[:, vocab.teacher_ids]
    q_s, q_t = shared_s / shared_s.sum(-1, keepdim=True), shared_t / shared_t.sum(-1, keepdim=True)
    if loss_type == "forward_kl":
        kl = F.kl_div(q_s.log(), q_t, reduction="none").sum(-1)
    else:
        kl = F.kl_div(q_t.log(), q_s, reduction="none").sum(-1)
    rest_s = p_s[:, [i for i in range(13) if i not in vocab.student_ids.tolist()]]
    rest_t = p_t[:, [i for i in range(17) if i not in vocab.teacher_ids.tolist()]]
    torch.testing.assert_close(got.double(), kl + 0.4 * _reference_uld(rest_s, rest_t), atol=1e-6, rtol=1e-5)


def test_gradient_reaches_span_starts_only():
    student, teacher, labels, s_pos, t_pos = _batch()
    student.requires_grad_(True)
    cross = CrossVocabTeacher(teacher, s_pos, t_pos, _partial_vocab(), "aligned", uld_weight=0.5)
    dense_distillation_terms(student, cross, labels, DivergenceSpec(alpha=0.0)).loss.backward()
    touched = student.grad.abs().sum(-1) > 0
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected[0, [2, 4, 5]] = True
    expected[1, [0, 3]] = True
    assert torch.equal(touched, expected)


def test_span_on_a_masked_position_is_refused():
    student, teacher, labels, s_pos, t_pos = _batch()
    s_pos[0, 0] = 1  # labels[0, 1] is -100
    cross = CrossVocabTeacher(teacher, s_pos, t_pos, _partial_vocab(), "uld")
    with pytest.raises(ValueError, match="label is -100"):
        dense_distillation_terms(student, cross, labels, DivergenceSpec())


def test_shared_vocabulary_of_two_real_tokenizers_matches_token_text():
    from transformers import AutoTokenizer

    student = AutoTokenizer.from_pretrained("recipes/demo/tokenizer")
    teacher = other_demo_tokenizer()
    vocab = shared_vocabulary(student, teacher, 900, 400)
    assert 100 < len(vocab.student_ids) < 400
    for s, t in zip(vocab.student_ids.tolist(), vocab.teacher_ids.tolist()):
        assert student.convert_ids_to_tokens(s) == teacher.convert_ids_to_tokens(t)
    # Special tokens with other names are not shared; the end-of-sequence tokens are not the same string.
    assert student.eos_token_id not in vocab.student_ids.tolist()
    lookup = vocab.teacher_to_student()
    assert lookup.shape == (400,) and (lookup >= 0).sum() == len(vocab.student_ids)
