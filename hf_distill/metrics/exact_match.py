"""`evaluate` module of exact match after `hf_distill.metrics.answers.normalize_answer` (whitespace, case, final
punctuation). Loaded by path: `evaluate.load(".../hf_distill/metrics/exact_match.py")`, no network needed."""

import datasets
import evaluate

from hf_distill.metrics.answers import exact_match


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of predictions equal to their reference after normalising whitespace, case and "
            "final punctuation.",
            citation="",
            inputs_description="predictions and references: lists of strings of the same length",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"exact_match": exact_match(predictions, references)}
