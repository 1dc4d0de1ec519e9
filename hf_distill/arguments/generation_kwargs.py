"""`generation_kwargs`, the further `transformers.GenerationConfig` fields of a run's generated completions: parsed
and checked once, when the config is built, so that no key is silently overwritten or changes what a completion is."""

from typing import Any

from transformers import GenerationConfig

from ..models.causal_lm import parse_init_kwargs
from ..user_errors import UserInputError


def parse_generation_kwargs(value: dict[str, Any] | str | None) -> dict[str, Any]:
    """`generation_kwargs` as a dict of valid `GenerationConfig` fields; errors name the field and the key."""
    value = parse_init_kwargs(value, "generation_kwargs")
    defaults = GenerationConfig().to_dict()
    for key in value:
        if key in _OWN_GENERATION_FIELDS:
            raise UserInputError(
                "invalid generation_kwargs",
                f"generation_kwargs[{key!r}]",
                f"{key!r} has its own field: {_OWN_GENERATION_FIELDS[key]}",
                f"set {_OWN_GENERATION_FIELDS[key]} instead",
            )
        if key in _PAIRING_GENERATION_FIELDS and value[key] != _PAIRING_GENERATION_FIELDS[key][0]:
            raise UserInputError(
                "invalid generation_kwargs",
                f"generation_kwargs[{key!r}]={value[key]!r}",
                _PAIRING_GENERATION_FIELDS[key][1],
                "remove it",
            )
        if key not in defaults:
            raise UserInputError(
                "invalid generation_kwargs",
                f"generation_kwargs[{key!r}]",
                f"{key!r} is not a transformers.GenerationConfig field",
                "remove it, or fix its name",
            )
    return value


# GenerationConfig fields that DistillConfig sets itself, and the fields that set them.
_OWN_GENERATION_FIELDS = {
    "max_new_tokens": "max_new_tokens",
    "max_length": "max_new_tokens",
    "do_sample": "generation_temperature (0 = greedy)",
    "temperature": "generation_temperature",
    "top_p": "generation_top_p",
    "top_k": "generation_top_k",
}
# GenerationConfig fields that would change the shape or the pairing of the generated completions (one per prompt,
# ending at the tokenizer's eos): the one value that changes nothing, and why any other is refused (it would be
# overwritten or break the pairing, never silently).
_PAIRING_GENERATION_FIELDS = {
    "num_return_sequences": (1, "each prompt gets one completion, its row's; more would not pair with the prompts"),
    "num_beams": (1, "completions are sampled (or greedy) one per prompt; beam search is not supported"),
    "num_beam_groups": (1, "beam search is not supported"),
    "eos_token_id": (
        None,
        "completions end at the tokenizer's eos_token, which would overwrite it; set the tokenizer's",
    ),
    "pad_token_id": (None, "generated batches are padded with the tokenizer's pad token, which would overwrite it"),
}
