"""The longest sequence each live teacher can read, checked against each batch before any forward pass: a teacher
run past its context either crashes inside its forward (an `IndexError` from a learned position embedding) or,
with rotary positions, extrapolates to targets it was never trained to give."""

from collections.abc import Sequence

from torch import nn

from ..user_errors import UserInputError


def context_length(model: nn.Module) -> int | None:
    """`max_position_embeddings` of the model's text config (GPT-2's `n_positions` through its alias), or None."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def teacher_contexts(teachers: Sequence[nn.Module]) -> list[tuple[str, int]]:
    """(name, context length) of each teacher that states one; a member of an ensemble is named with its index."""
    contexts = []
    for i, teacher in enumerate(teachers):
        limit = context_length(teacher)
        if limit is not None:
            name = getattr(teacher.config, "name_or_path", "") or type(teacher).__name__
            contexts.append((name if len(teachers) == 1 else f"{i} ({name})", limit))
    return contexts


def check_batch_length(length: int, contexts: list[tuple[str, int]]) -> None:
    """One-line error when a batch of `length` positions is longer than a teacher's context."""
    for name, limit in contexts:
        if length > limit:
            raise UserInputError(
                "batch longer than the teacher's context",
                f"teacher {name}, max_position_embeddings={limit}",
                f"the teacher reads at most {limit} positions, but a batch has {length}",
                f"set max_length <= {limit} (or truncate the data)",
            )
