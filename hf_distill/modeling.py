"""Loading causal LMs and checking that a teacher and a student can be distilled into one another."""

import json
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

# Embedding matrices are commonly padded up to a multiple of one of these for speed (e.g. Qwen2.5: 151,936 rows for
# 151,665 tokens); widths that differ only by such padding still describe the same vocabulary.
_PAD_MULTIPLES = (8, 16, 32, 64, 128, 256)


def resolve_dtype(init_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Copy of `init_kwargs` with a `dtype` (or legacy `torch_dtype`) given as a string turned into a torch dtype."""
    kwargs = dict(init_kwargs or {})
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            if not isinstance(getattr(torch, value, None), torch.dtype):
                raise ValueError(f"{key}={value!r} is not a torch dtype (e.g. 'bfloat16', 'float32' or 'auto')")
            kwargs[key] = getattr(torch, value)
    return kwargs


def parse_init_kwargs(value: dict[str, Any] | str | None, field_name: str) -> dict[str, Any]:
    """Model init kwargs from a dict, a JSON string (command line) or None."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{field_name}={value!r} is not valid JSON: {err.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{field_name} must be a mapping, got {value!r}")
    return value


def load_causal_lm(name_or_path: str, role: str, **init_kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` with errors that say which model (`role`) failed and why."""
    kwargs = resolve_dtype(init_kwargs)
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=kwargs.get("trust_remote_code", False))
    except (OSError, ValueError) as err:
        where = "local folder" if os.path.isdir(name_or_path) else "path or hub id"
        raise ValueError(f"{role} {name_or_path!r}: cannot load a model config from this {where} ({err})") from None
    if type(config) not in AutoModelForCausalLM._model_mapping and not kwargs.get("trust_remote_code"):
        raise ValueError(
            f"{role} {name_or_path!r} is a {config.model_type!r} model, which is not a causal language model"
        )
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def output_width(model: PreTrainedModel) -> int:
    """Number of logits the model produces per position."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight.shape[0]
    return model.config.get_text_config().vocab_size


def _differ_by_padding(a: int, b: int) -> bool:
    small, large = sorted((a, b))
    return any(large % m == 0 and large - small < m for m in _PAD_MULTIPLES)


def check_vocabularies(student: PreTrainedModel, teacher: PreTrainedModel, tokenizer_size: int | None) -> int:
    """Raise if teacher and student cannot share a vocabulary; return the number of logits the divergence uses.

    The two logit widths may differ only by padding rows, and with a tokenizer both need a logit for each of its
    `tokenizer_size` tokens.
    """
    width_s, width_t = output_width(student), output_width(teacher)
    if width_s != width_t and not _differ_by_padding(width_s, width_t):
        raise ValueError(
            f"vocabulary mismatch: student vocab size {width_s} and teacher vocab size {width_t} differ by more than "
            "embedding padding; distillation needs a shared tokenizer"
        )
    common = min(width_s, width_t)
    if tokenizer_size is not None and common < tokenizer_size:
        raise ValueError(
            f"vocabulary mismatch: the tokenizer has {tokenizer_size} tokens but the student has {width_s} logits "
            f"and the teacher {width_t}; both need one logit per token"
        )
    return common
