"""Teacher models run beside the student: one model, or an ensemble whose members are combined position by
position."""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..losses import TeacherHeads, TeacherLogits, check_ensemble_mode
from ..losses.ensemble import softened_teacher
from ..models.causal_lm import check_vocab_sizes, output_width
from ..models.hidden_states import final_hidden_states, lm_head
from ..user_errors import UserInputError
from .protocol import DENSE_LOGITS, HIDDEN_STATES


def check_member_vocabularies(members: Sequence[nn.Module]) -> None:
    """Members must share one vocabulary: their logit widths may differ only by embedding padding."""
    widths = [output_width(m) for m in members]
    for i, width in enumerate(widths[1:], start=1):
        try:
            check_vocab_sizes(widths[0], width, None)
        except ValueError:
            raise UserInputError(
                f"teacher ensemble vocabulary mismatch: teacher 0 has {widths[0]} logits and teacher {i} has "
                f"{width}, more than embedding padding apart; ensemble members need one shared tokenizer"
            ) from None


class LiveTeacher:
    """`hf_distill.teachers.protocol.Teacher` of models run alongside the student: one, or an ensemble whose members
    are softened by the temperature and then combined as `mode` says with `weights`
    (`hf_distill.losses.combine_log_probs`).

    Members of weight 0 are dropped, never run. Every side is the teacher at the positions that predict a next token
    (`[:, :-1]`, aligned with `labels[:, 1:]`), computed without gradients.

    Args:
        members: the teacher models, frozen and placed for the engine (DDP copy, FSDP2 shards, ZeRO-3 engine).
        weights: one per member, summing to 1.
        mode: `mean_probs` or `mean_logprobs`.
        kd_vocab: the vocabulary entries the divergence compares (the student's and the members' widths agree up to
            embedding padding).
        names: the teachers as the model card names them.
        unwrap: strips the engine's wrapper from a member (the fused path reads its head).
    """

    gives = frozenset({DENSE_LOGITS, HIDDEN_STATES})
    fused = True
    distills = True
    evaluates = True

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float],
        mode: str,
        kd_vocab: int,
        names: Sequence[str] = (),
        unwrap: Callable[[nn.Module], nn.Module] = lambda model: model,
    ):
        check_ensemble_mode(mode)
        kept = [(m, w) for m, w in zip(members, weights) if w > 0]
        self.models = [m for m, _ in kept]
        self.weights = [w for _, w in kept]
        self.mode, self.kd_vocab, self._names, self._unwrap = mode, kd_vocab, list(names), unwrap
        self.kind = "model" if len(members) == 1 else "ensemble"

    @property
    def writer(self) -> nn.Module | None:
        return self._unwrap(self.models[0]) if len(self.models) == 1 else None

    def side(self, batch: dict[str, Any], model_inputs: dict[str, Any], fused: bool, training: bool):
        return self.heads(model_inputs) if fused else self.logits(model_inputs)

    def names(self) -> list[str]:
        return self._names or [m.config.name_or_path or type(m).__name__ for m in map(self._unwrap, self.models)]

    @torch.no_grad()
    def heads(self, model_inputs: dict[str, Any]) -> TeacherHeads:
        """Final hidden states and LM heads, for the fused loss."""
        unwrap = self._unwrap
        hidden = [final_hidden_states(m, unwrap(m), model_inputs)[:, :-1] for m in self.models]
        return TeacherHeads(hidden, [lm_head(unwrap(m)) for m in self.models], self.weights, self.mode)

    @torch.no_grad()
    def logits(self, model_inputs: dict[str, Any]) -> TeacherLogits:
        """Each member's full logits, for the dense loss."""
        return TeacherLogits([m(**model_inputs).logits[:, :-1] for m in self.models], self.weights, self.mode)

    @torch.no_grad()
    def log_probs(self, model_inputs: dict[str, Any], temperature: float = 1.0) -> torch.Tensor:
        """The teacher's distribution `(B, L - 1, kd_vocab)` softened by `temperature`, as log-probabilities."""
        members = (m(**model_inputs).logits[:, :-1] for m in self.models)
        return softened_teacher(members, self.weights, self.mode, temperature, self.kd_vocab)
