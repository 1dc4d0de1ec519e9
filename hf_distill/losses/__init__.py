"""Distillation losses: plain functions of tensors, independent of any trainer.

Conventions shared by every function here:

- logits are `(B, L, V)` and labels `(B, L)`, already aligned position by position (the causal shift is the
  caller's job); a label of `-100` marks a position that does not count;
- the maths runs in float32 whatever the input dtype;
- `reduction="sum"` sums over valid positions, `"mean"` divides that sum by the number of valid positions (0.0 when
  there are none), `"none"` returns the `(B, L)` per-position values with 0 at ignored positions.

Modules: `divergences` (dense divergences, CE, `DivergenceSpec`), `sparse` (top-k teachers), `ensemble` (combining
teacher distributions), `sources` (LM heads and live teachers), `terms` (per-position terms, the dense entry point),
`fused` (the chunked entry point), `linear` (the fused loss for one teacher given as tensors), `cross_vocab`
(teachers with another tokenizer, compared span by span).
"""

from .cross_vocab import CROSS_TOKENIZER_MODES, CrossVocabTeacher, VocabularyMap, span_divergence, uld_distance
from .divergences import (
    IGNORE_INDEX,
    LOSS_TYPES,
    REDUCTIONS,
    DivergenceSpec,
    cross_entropy_loss,
    distillation_loss,
    divergence,
)
from .ensemble import ENSEMBLE_MODES, check_ensemble_mode, combine_log_probs
from .fused import LOSS_CHUNK_SIZE, fused_distillation_loss
from .linear import linear_distillation_loss
from .sources import LMHead, TeacherHeads, TeacherLogits
from .sparse import SPARSE_MODES, TopKTeacher, sparse_distillation_loss
from .terms import DistillationTerms, dense_distillation_terms

__all__ = [
    "CROSS_TOKENIZER_MODES",
    "CrossVocabTeacher",
    "VocabularyMap",
    "span_divergence",
    "uld_distance",
    "ENSEMBLE_MODES",
    "IGNORE_INDEX",
    "LOSS_CHUNK_SIZE",
    "LOSS_TYPES",
    "REDUCTIONS",
    "SPARSE_MODES",
    "DistillationTerms",
    "DivergenceSpec",
    "LMHead",
    "TeacherHeads",
    "TeacherLogits",
    "TopKTeacher",
    "check_ensemble_mode",
    "combine_log_probs",
    "cross_entropy_loss",
    "dense_distillation_terms",
    "distillation_loss",
    "divergence",
    "fused_distillation_loss",
    "linear_distillation_loss",
    "sparse_distillation_loss",
]
