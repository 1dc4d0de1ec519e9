"""Aligning two tokenizations of the same text: pure functions of token end positions, for cross-tokenizer
distillation.

Each side's tokens are known by where each one ends in a text coordinate both sides share (`SideTokens.ends`; None
for a token that covers no shared text: a chat-template marker, a BOS, a token straddling the edge of shared text),
and by the coordinates where that side's tokens start afresh at the beginning of shared text (`SideTokens.starts`).
A *span* is the shortest run of student tokens and of teacher tokens that cover the same characters: the text
between two consecutive coordinates where both sides have a token boundary. Several tokens ending at one coordinate
(the byte-fallback tokens of one character) belong to one span together.
"""

from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple


class SideTokens(NamedTuple):
    """One side's tokenization in the shared coordinate: `ends[i]` the coordinate where token i ends (None: no
    shared text), `starts` the coordinates where a region of shared text begins with a token boundary on this side."""

    ends: Sequence[int | None]
    starts: frozenset[int] = frozenset({0})


class Span(NamedTuple):
    """The token indices of one span on each side (`range`s of consecutive indices)."""

    student: range
    teacher: range


def _tokens_by_end(side: SideTokens) -> dict[int, list[int]]:
    by_end: dict[int, list[int]] = {}
    for i, end in enumerate(side.ends):
        if end is not None:
            by_end.setdefault(end, []).append(i)
    return by_end


def _side_range(
    side: SideTokens, by_end: dict[int, list[int]], sorted_ends: list[int], start: int, end: int
) -> range | None:
    """The tokens covering exactly (start, end] on one side, or None when they do not: a gap, a token without
    shared text in between, or a first token whose text does not begin at `start`."""
    inside = sorted_ends[bisect_right(sorted_ends, start) : bisect_right(sorted_ends, end)]
    tokens = [i for e in inside for i in by_end[e]]
    if not tokens or end not in by_end:
        return None
    first, last = min(tokens), max(tokens)
    if last - first + 1 != len(tokens):
        return None  # a token without shared text, or one ending elsewhere, lies between them
    before = side.ends[first - 1] if first > 0 else None
    if before != start and not (start in side.starts and (before is None or before < start)):
        return None
    return range(first, last + 1)


def align_spans(student: SideTokens, teacher: SideTokens) -> list[Span]:
    """The spans of two tokenizations of the same text, in order. Text that cannot be aligned (one side has no
    token boundary where the other's span ends, or a token without shared text interrupts a span) yields no span:
    its tokens are left out, never paired with the wrong ones."""
    by_end_s, by_end_t = _tokens_by_end(student), _tokens_by_end(teacher)
    cuts_s = set(by_end_s) | set(student.starts)
    cuts_t = set(by_end_t) | set(teacher.starts)
    cuts = sorted(cuts_s & cuts_t)
    sorted_s, sorted_t = sorted(by_end_s), sorted(by_end_t)
    spans = []
    for start, end in zip(cuts, cuts[1:]):
        s = _side_range(student, by_end_s, sorted_s, start, end)
        t = _side_range(teacher, by_end_t, sorted_t, start, end)
        if s is not None and t is not None:
            spans.append(Span(s, t))
    return spans
