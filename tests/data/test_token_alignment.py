"""Span alignment of two tokenizations (hf_distill.data: token_alignment, cross_tokenization), on hand-made
token ends and on two real, different tokenizers of the demo data."""

import json
import os

import pytest
import torch
from testing_utils import REPO_ROOT, other_demo_tokenizer
from transformers import AutoTokenizer

from hf_distill.data.cross_tokenization import cross_tokenize, layout_cross_tokenized, render, side_tokens
from hf_distill.data.datasets import _TOKENIZERS
from hf_distill.data.token_alignment import SideTokens, Span, align_spans

DEMO = os.path.join(REPO_ROOT, "recipes", "demo")


def spans(student_ends, teacher_ends, student_starts=(0,), teacher_starts=(0,)):
    return align_spans(
        SideTokens(student_ends, frozenset(student_starts)), SideTokens(teacher_ends, frozenset(teacher_starts))
    )


def test_identical_tokenizations_give_one_span_per_token():
    assert spans([3, 5, 9], [3, 5, 9]) == [Span(range(i, i + 1), range(i, i + 1)) for i in range(3)]


def test_merges_on_one_side_and_splits_on_the_other():
    # "Hello world": student Hel|lo| world, teacher Hello| wor|ld.
    assert spans([3, 5, 11], [5, 9, 11]) == [Span(range(0, 2), range(0, 1)), Span(range(2, 3), range(1, 3))]


def test_byte_fallback_tokens_of_one_character_stay_together():
    # "aé b": student a|<0xC3>|<0xA9>| b (both bytes of é end at character 2), teacher aé| b.
    assert spans([1, 2, 2, 4], [2, 4]) == [Span(range(0, 3), range(0, 1)), Span(range(3, 4), range(1, 2))]


def test_whitespace_token_on_one_side():
    # " the": student " "|"the", teacher " the".
    assert spans([1, 4], [4]) == [Span(range(0, 2), range(0, 1))]


def test_template_tokens_are_skipped_and_text_after_them_aligns():
    # Shared text starts at coordinate 0 after one template token (student) or two (teacher).
    assert spans([None, 3, 6], [None, None, 3, 6]) == [Span(range(1, 2), range(2, 3)), Span(range(2, 3), range(3, 4))]


def test_a_token_without_shared_text_inside_a_span_is_never_paired():
    # The student's second token covers no shared text (a marker inside the text): the text after it is not
    # aligned, since the student's next token does not start where the teacher's does.
    assert spans([2, None, 5], [2, 5]) == [Span(range(0, 1), range(0, 1))]


def test_a_region_not_started_cleanly_on_one_side_is_skipped():
    # The teacher's first token straddles the start of the shared text (its start is not a boundary there).
    assert spans([None, 3, 6], [None, 3, 6], teacher_starts=()) == [Span(range(2, 3), range(2, 3))]


def test_spans_end_only_where_both_sides_have_a_boundary():
    assert spans([2, 5], [3, 5]) == [Span(range(0, 2), range(0, 2))]
    assert spans([2, 5], [3, 4]) == []  # the texts end differently: nothing covers the same characters
    assert spans([2, None], [3, None]) == []


def _demo_examples(n=40):
    with open(os.path.join(DEMO, "data", "train.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in list(f)[:n]]


@pytest.fixture(scope="module")
def tokenizers():
    return AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer")), other_demo_tokenizer()


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "text"])
def test_real_tokenizers_align_spans_of_the_same_text(tokenizers, fmt):
    """Every span decodes to the same text on both sides, and each side's span starts right after the same text."""
    student, teacher = tokenizers
    aligned = targets = 0
    for example in _demo_examples():
        messages = example["messages"]
        if fmt == "prompt_completion":
            example = {"prompt": messages[0]["content"], "completion": " " + messages[1]["content"]}
        elif fmt == "text":
            example = {"text": messages[0]["content"] + " " + messages[1]["content"]}
        ids, labels = _TOKENIZERS[fmt](example, student)
        out = cross_tokenize(example, fmt, student, teacher, ids, labels, max_length=512)
        teacher_ids = out["teacher_input_ids"]
        s_spans = align_spans(
            side_tokens(render(example, fmt, student), student.eos_token_id),
            side_tokens(render(example, fmt, teacher), teacher.eos_token_id),
        )
        kept = {span.student.start - 1: span for span in s_spans}
        for s_pos, t_pos in zip(out["span_student_positions"], out["span_teacher_positions"]):
            span = kept[s_pos]
            assert span.teacher.start - 1 == t_pos
            s_text = student.decode(ids[span.student.start : span.student.stop])
            t_text = teacher.decode(teacher_ids[span.teacher.start : span.teacher.stop])
            if ids[span.student.start] == student.eos_token_id:
                assert teacher_ids[span.teacher.start] == teacher.eos_token_id
            else:
                assert s_text == t_text
        n_targets = sum(label != -100 for label in labels[1:])
        assert out["unaligned_targets"] == n_targets - sum(len(kept[p].student) for p in out["span_student_positions"])
        aligned += len(out["span_student_positions"])
        targets += n_targets
    # Both tokenizers split the words of the demo data at word starts, so most targets align.
    assert aligned > 0.5 * targets


def test_messages_use_each_sides_chat_template(tokenizers):
    student, teacher = tokenizers
    example = _demo_examples(1)[0]
    ids, labels = _TOKENIZERS["messages"](example, student)
    out = cross_tokenize(example, "messages", student, teacher, ids, labels, max_length=512)
    assert student.decode(ids).startswith("<|bos|><|user|>")
    assert teacher.decode(out["teacher_input_ids"]).startswith("<s>[ASK] ")
    # The reply's end aligns: the last span pairs <|eos|> with </s>.
    assert ids[out["span_student_positions"][-1] + 1] == student.eos_token_id
    assert out["teacher_input_ids"][out["span_teacher_positions"][-1] + 1] == teacher.eos_token_id
    assert out["unaligned_targets"] == 0


def test_truncation_drops_spans_past_max_length(tokenizers):
    student, teacher = tokenizers
    example = _demo_examples(1)[0]
    ids, labels = _TOKENIZERS["messages"](example, student)
    full = cross_tokenize(example, "messages", student, teacher, ids, labels, max_length=512)
    cut = cross_tokenize(example, "messages", student, teacher, ids, labels, max_length=30)
    assert len(cut["teacher_input_ids"]) == 30
    assert 0 < len(cut["span_student_positions"]) < len(full["span_student_positions"])
    assert max(cut["span_teacher_positions"]) < 29 and max(cut["span_student_positions"]) < 29
    assert cut["unaligned_targets"] > full["unaligned_targets"]


def test_layout_pads_spans_and_moves_student_positions_under_left_padding():
    features = [
        {
            "input_ids": [5, 6, 7],
            "teacher_input_ids": [1, 2],
            "span_student_positions": [1],
            "span_teacher_positions": [0],
        },
        {"input_ids": [5], "teacher_input_ids": [3], "span_student_positions": [], "span_teacher_positions": []},
    ]
    right = layout_cross_tokenized(features, 3, "right", pad_token_id=9)
    assert right["teacher_input_ids"].tolist() == [[1, 2], [3, 9]]
    assert right["teacher_attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert right["span_student_positions"].tolist() == [[1], [-1]]
    features[0]["input_ids"] = [5, 6]
    left = layout_cross_tokenized(features, 3, "left", pad_token_id=9)
    assert torch.equal(left["span_student_positions"], torch.tensor([[2], [-1]]))


def test_a_reply_the_teachers_template_rewrites_is_skipped_and_counted():
    """A chat template that changes the reply's text (here: upper-cased) leaves no shared text to align: every
    target is counted as unaligned, none is paired."""
    from testing_utils import DIGIT_CHAT_TEMPLATE, digit_tokenizer, word_tokenizer

    student, teacher = word_tokenizer(), digit_tokenizer()
    example = {"messages": [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w13 w4"}]}
    ids, labels = _TOKENIZERS["messages"](example, student)
    aligned = cross_tokenize(example, "messages", student, teacher, ids, labels, max_length=64)
    assert aligned["span_student_positions"] and aligned["unaligned_targets"] == 0
    teacher.chat_template = DIGIT_CHAT_TEMPLATE.replace("[A] {{ m['content'] }}", "[A] {{ m['content'] | upper }}")
    rewritten = cross_tokenize(example, "messages", student, teacher, ids, labels, max_length=64)
    assert rewritten["span_student_positions"] == [] and rewritten["span_teacher_positions"] == []
    assert rewritten["unaligned_targets"] == sum(label != -100 for label in labels[1:]) == 3
