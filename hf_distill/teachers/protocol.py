"""The teacher protocol: what every kind of teacher answers.

A run resolves its teacher once (`build.build_teacher`) into one object; the trainer, generation, the cache builder
and the model card ask that object, never its class. The kinds: `NoTeacher` (`alpha: 1`), `LiveTeacher` (one model
or an ensemble, run beside the student), `CrossTokenizerTeacher` (one model with its own tokenizer) and
`CachedTeacher` (a teacher cache's top-k) and `ServerTeacher` (the top-k of a teacher behind a vLLM server).
"""

from typing import Any, Protocol

from torch import nn

from ..losses import CrossVocabTeacher, TeacherHeads, TeacherLogits, TopKTeacher

# What a teacher gives the loss at each position: full logits (dense path), its top-k log-probabilities (sparse), or
# final hidden states and an LM head (the fused chunked path computes the logits chunk by chunk).
DENSE_LOGITS = "dense logits"
TOP_K_LOG_PROBS = "top-k log-probs"
HIDDEN_STATES = "hidden states"

# The teacher side of one micro-batch, as the loss functions of `hf_distill.losses` take it (None: no teacher).
TeacherSide = TeacherHeads | TeacherLogits | TopKTeacher | CrossVocabTeacher | None


class Teacher(Protocol):
    """One kind of teacher.

    Attributes:
        kind: its name in logs and the model card (`none`, `model`, `ensemble`, `cross_tokenizer`, `cache`,
            `server`).
        gives: what it can give the loss (`DENSE_LOGITS`, `TOP_K_LOG_PROBS`, `HIDDEN_STATES`).
        fused: whether the fused chunked loss can take it.
        distills: whether the loss has a divergence term (False only without a teacher).
        evaluates: whether evaluation batches get it (a cache holds the train split only), so evaluation reports
            its KD and agreement.
        models: the models it runs, frozen and placed for the distributed engine when it was built (DDP copy, FSDP2
            shards, ZeRO-3 engine): their heads are probed and their context lengths checked. Empty when it runs
            none.
        writer: the model that writes `seq_kd` completions (one live model), else None.
    """

    kind: str
    gives: frozenset[str]
    fused: bool
    distills: bool
    evaluates: bool
    models: list[nn.Module]
    writer: nn.Module | None

    def side(self, batch: dict[str, Any], model_inputs: dict[str, Any], fused: bool, training: bool) -> TeacherSide:
        """Its side of one micro-batch: heads on the fused path (`fused`), else logits or top-k; `batch` is the
        whole batch (cache columns, teacher tokens), `model_inputs` what a model's forward takes."""
        ...

    def names(self) -> list[str]:
        """The teacher as a model card names it: hub ids or folders, else the models' classes; [] without one."""
        ...
