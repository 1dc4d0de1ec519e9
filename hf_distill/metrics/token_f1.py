"""`evaluate` module of the token-overlap F1 of `hf_distill.metrics.answers.token_f1` (SQuAD's F1 on normalised
answers). Loaded by path: `evaluate.load(".../hf_distill/metrics/token_f1.py")`, no network needed."""

import datasets
import evaluate

from hf_distill.metrics.answers import token_f1


class TokenF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean F1 of the word overlap of each prediction with its reference, after normalisation.",
            citation="",
            inputs_description="predictions and references: lists of strings of the same length",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"token_f1": token_f1(predictions, references)}
