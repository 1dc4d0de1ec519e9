"""Each example rendered and tokenized for the teacher too, with the spans that align its tokens with the student's
(`hf_distill.data.token_alignment`), for distilling from a teacher with another tokenizer (`cross_tokenizer`).

Both sides are tokenized by their fast tokenizers with character offsets. The text both render the same way is the
shared text: the whole text of `text` data, prompt and completion of `prompt_completion` data, and each assistant
turn's content of `messages` data (each side renders the conversation with its own chat template, whose markers are
not shared). An end-of-sequence token right after a piece of shared text, on both sides, is aligned too (one virtual
character past its end), so the teacher teaches where to stop.
"""

from typing import NamedTuple

import torch

from ..losses import IGNORE_INDEX
from .token_alignment import SideTokens, align_spans

# Columns a cross-tokenizer example carries: the teacher's tokens, and for each aligned span the positions of the
# student's and the teacher's logits that predict its first token (the causal shift applied); and the batch keys
# the collator makes of them, which the student's forward never sees.
CROSS_COLUMNS = ("teacher_input_ids", "span_student_positions", "span_teacher_positions")
CROSS_BATCH_KEYS = (*CROSS_COLUMNS, "teacher_attention_mask")


class Rendered(NamedTuple):
    """One side's tokens with their character offsets in its rendered text, and its pieces of shared text as
    `(start, end, coordinate)`: characters `start:end` of the rendered text are shared text starting at
    `coordinate`, the same on both sides."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    regions: list[tuple[int, int, int]]


def _encode(tokenizer, text: str, shift: int = 0, **kwargs) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = tokenizer(text, return_offsets_mapping=True, **kwargs)
    return list(encoding["input_ids"]), [(s + shift, e + shift) for s, e in encoding["offset_mapping"]]


def _with_eos(ids: list[int], offsets: list, tokenizer) -> tuple[list[int], list]:
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        return ids + [eos], offsets + [(0, 0)]
    return ids, offsets


def render(example: dict, fmt: str, tokenizer) -> Rendered:
    """`example` tokenized by `tokenizer` as `hf_distill.data.datasets` tokenizes it (the same ids), with offsets."""
    if fmt == "text":
        ids, offsets = _with_eos(*_encode(tokenizer, example["text"]), tokenizer)
        return Rendered(ids, offsets, [(0, len(example["text"]), 0)])
    if fmt == "prompt_completion":
        prompt, completion = example["prompt"], example["completion"]
        ids, offsets = _encode(tokenizer, prompt)
        more, more_offsets = _encode(tokenizer, completion, shift=len(prompt), add_special_tokens=False)
        ids, offsets = _with_eos(ids + more, offsets + more_offsets, tokenizer)
        return Rendered(ids, offsets, [(0, len(prompt) + len(completion), 0)])
    if fmt == "messages":
        return _render_messages(example["messages"], tokenizer)
    raise ValueError(f"dataset_format={fmt!r} cannot be distilled across tokenizers (it has no target tokens)")


def _render_messages(messages: list, tokenizer) -> Rendered:
    generation_prompt = bool(messages) and messages[-1]["role"] != "assistant"
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ids, offsets = _encode(tokenizer, text, add_special_tokens=False)
    regions, coordinate, searched = [], 0, 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not isinstance(message.get("content"), str):
            continue
        content = message["content"]
        if i > 0:
            prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            searched = max(searched, len(prefix) if text.startswith(prefix) else 0)
        start = text.find(content, searched) if content else -1
        if start >= 0:
            regions.append((start, start + len(content), coordinate))
            searched = start + len(content)
        # A turn found on one side only is left out there; the coordinates of the later turns stay the same.
        coordinate += len(content) + 2
    return Rendered(ids, offsets, regions)


def side_tokens(rendered: Rendered, eos_token_id: int | None) -> SideTokens:
    """The tokens' ends in the shared coordinate: a token ending inside a piece of shared text, and starting in it
    (or right before it, where the offsets leave out leading whitespace), ends at its coordinate there; an
    end-of-sequence token right after a token that ends a piece ends one past it."""
    ends: list[int | None] = []
    starts = set()
    region_ends = {coordinate + end - start for start, end, coordinate in rendered.regions}
    for i, (token, (start, end)) in enumerate(zip(rendered.ids, rendered.offsets)):
        ends.append(None)
        if token == eos_token_id and i > 0 and ends[i - 1] in region_ends:
            ends[i] = ends[i - 1] + 1
            continue
        for r_start, r_end, coordinate in rendered.regions:
            if r_start < end <= r_end and start >= r_start:
                ends[i] = coordinate + end - r_start
                if i == 0 or rendered.offsets[i - 1][1] <= r_start:
                    starts.add(coordinate)
                break
    return SideTokens(ends, frozenset(starts))


def cross_tokenize(
    example: dict,
    fmt: str,
    student_tokenizer,
    teacher_tokenizer,
    student_ids: list[int],
    labels: list[int],
    max_length: int,
) -> dict:
    """The teacher's tokens of `example` (cut to `max_length`) and the spans aligned with the student's tokens
    `student_ids` (as `data.datasets` made them, labels included, before truncation): each span whose student
    tokens are all targets and lie, on both sides, within `max_length` tokens past the first. `unaligned_targets`
    counts the student's target tokens in no such span."""
    student = render(example, fmt, student_tokenizer)
    if student.ids != list(student_ids):
        raise ValueError(
            "the student tokenizer's tokens of the rendered text, with offsets, differ from its tokens of the example"
        )
    teacher = render(example, fmt, teacher_tokenizer)
    spans = align_spans(
        side_tokens(student, student_tokenizer.eos_token_id), side_tokens(teacher, teacher_tokenizer.eos_token_id)
    )
    n_student, n_teacher = min(len(student.ids), max_length), min(len(teacher.ids), max_length)
    student_positions, teacher_positions, covered = [], [], 0
    for span in spans:
        if span.student.start < 1 or span.teacher.start < 1:
            continue  # position 0 is predicted by nothing
        if span.student.stop > n_student or span.teacher.stop > n_teacher:
            continue
        if any(labels[i] == IGNORE_INDEX for i in span.student):
            continue
        student_positions.append(span.student.start - 1)
        teacher_positions.append(span.teacher.start - 1)
        covered += len(span.student)
    targets = sum(label != IGNORE_INDEX for label in labels[1:max_length])
    return {
        "teacher_input_ids": teacher.ids[:max_length],
        "span_student_positions": student_positions,
        "span_teacher_positions": teacher_positions,
        "unaligned_targets": targets - covered,
    }


def layout_cross_tokenized(features: list[dict], student_length: int, padding_side: str, pad_token_id: int) -> dict:
    """A batch's teacher tokens, padded on the right with `pad_token_id` (`teacher_input_ids`,
    `teacher_attention_mask`), and its spans' positions `(B, S)` padded with -1, the student's moved by the padding
    the student's tokens got on the left (`padding_side`) to fit `student_length`."""
    teacher_length = max(len(f["teacher_input_ids"]) for f in features)
    n_spans = max(1, max(len(f["span_student_positions"]) for f in features))
    ids = torch.full((len(features), teacher_length), pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    positions = torch.full((2, len(features), n_spans), -1, dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["teacher_input_ids"])
        ids[row, :n] = torch.tensor(feature["teacher_input_ids"], dtype=torch.long)
        attention[row, :n] = 1
        shift = student_length - len(feature["input_ids"]) if padding_side == "left" else 0
        k = len(feature["span_student_positions"])
        positions[0, row, :k] = torch.tensor(feature["span_student_positions"], dtype=torch.long) + shift
        positions[1, row, :k] = torch.tensor(feature["span_teacher_positions"], dtype=torch.long)
    return {
        "teacher_input_ids": ids,
        "teacher_attention_mask": attention,
        "span_student_positions": positions[0],
        "span_teacher_positions": positions[1],
    }
