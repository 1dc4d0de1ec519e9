"""Exact match and token F1 of generated answers against references, after one normalisation.

`normalize_answer`: strip, lower-case, collapse every run of whitespace to one space, then drop the final
punctuation (any trailing `.`, `!`, `?`, `,`, `;`, `:` and the whitespace between them). So `"  In  Vostal. "` and
`"in vostal"` match, `"3"` and `"3."` match, but `"3, 4"` and `"3 4"` do not (inner punctuation is kept).

`token_f1`: the harmonic mean of precision and recall of the normalised answers' word multisets (SQuAD's F1), words
being the whitespace-separated pieces with punctuation stripped from both ends; two empty answers score 1.
"""

import re
import string
from collections import Counter

FINAL_PUNCTUATION = ".!?,;:"


def normalize_answer(text: str) -> str:
    """`text` stripped, lower-cased, with runs of whitespace made one space and final punctuation removed."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(FINAL_PUNCTUATION + " ")


def answer_words(text: str) -> list[str]:
    """The words of the normalised `text`, punctuation stripped from both ends of each, empty ones dropped."""
    words = (word.strip(string.punctuation) for word in normalize_answer(text).split(" "))
    return [word for word in words if word]


def _check(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; they must pair up")
    if not predictions:
        raise ValueError("no predictions to score")


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after `normalize_answer`."""
    _check(predictions, references)
    matches = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return matches / len(predictions)


def f1_of(prediction: str, reference: str) -> float:
    """Token F1 of one answer."""
    predicted, expected = Counter(answer_words(prediction)), Counter(answer_words(reference))
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((predicted & expected).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(predicted.values()), common / sum(expected.values())
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: list[str], references: list[str]) -> float:
    """Mean token F1 of the predictions against their references."""
    _check(predictions, references)
    return sum(f1_of(p, r) for p, r in zip(predictions, references)) / len(predictions)
