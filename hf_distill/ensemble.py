"""Teacher ensembles: several teachers combined into one distribution per position."""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from .losses import check_ensemble_mode, combine_log_probs
from .modeling import check_vocab_sizes, output_width


def check_member_vocabularies(members: Sequence[nn.Module]) -> None:
    """Members must share one vocabulary: their logit widths may differ only by embedding padding."""
    widths = [output_width(m) for m in members]
    for i, width in enumerate(widths[1:], start=1):
        try:
            check_vocab_sizes(widths[0], width, None)
        except ValueError:
            raise ValueError(
                f"teacher ensemble vocabulary mismatch: teacher 0 has {widths[0]} logits and teacher {i} has "
                f"{width}, more than embedding padding apart; ensemble members need one shared tokenizer"
            ) from None


class TeacherEnsemble(nn.Module):
    """Teachers called like one: `forward(**model_inputs).logits` are `temperature * log p_ensemble`, logits whose
    softmax at `temperature` is the ensemble's distribution, so a loss that softens teacher logits by `temperature`
    gets exactly the combined distribution.

    Each member's logits are cut to `vocab_size` and softened by `temperature` before they are combined: the
    ensemble mixes the softened distributions the loss compares, not the raw ones. Members of weight 0 are not run.
    """

    def __init__(
        self, members: Sequence[nn.Module], weights: Sequence[float], mode: str, temperature: float, vocab_size: int
    ):
        super().__init__()
        check_ensemble_mode(mode)
        kept = [(m, w) for m, w in zip(members, weights) if w > 0]
        self.members = nn.ModuleList([m for m, _ in kept])
        self.weights = [w for _, w in kept]
        self.mode, self.temperature, self.vocab_size = mode, temperature, vocab_size

    def forward(self, **model_inputs) -> CausalLMOutput:
        log_probs = [
            F.log_softmax(m(**model_inputs).logits[..., : self.vocab_size].float() / self.temperature, dim=-1)
            for m in self.members
        ]
        return CausalLMOutput(logits=combine_log_probs(log_probs, self.weights, self.mode) * self.temperature)
