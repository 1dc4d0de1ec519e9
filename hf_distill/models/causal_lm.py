"""Low-level loading of causal LMs and their configs, and checks that a teacher and a student can be distilled into
one another. Which model is loaded with which arguments is decided in `loading.py`."""

import json
import os
import re
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, get_model_conversion_mapping
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..user_errors import UserInputError, bad_value

# Embedding matrices are commonly padded up to a multiple of one of these for speed (e.g. Qwen2.5: 151,936 rows for
# 151,665 tokens); widths that differ only by such padding still describe the same vocabulary.
_PAD_MULTIPLES = (8, 16, 32, 64, 128, 256)
# Weight files of formats whose tensor names cannot be read without loading the tensors.
_OTHER_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, *_OTHER_WEIGHT_FILES)


def resolve_dtype(init_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Copy of `init_kwargs` with a `dtype` (or legacy `torch_dtype`) given as a string turned into a torch dtype."""
    kwargs = dict(init_kwargs or {})
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            if not isinstance(getattr(torch, value, None), torch.dtype):
                raise UserInputError(
                    "unknown dtype",
                    f"{key}={value!r}",
                    "not a torch dtype",
                    "use e.g. 'bfloat16', 'float32' or 'auto'",
                )
            kwargs[key] = getattr(torch, value)
    return kwargs


def parse_init_kwargs(value: dict[str, Any] | str | None, field_name: str) -> dict[str, Any]:
    """A mapping field (model init kwargs, generation kwargs) from a dict, a JSON string (command line) or None."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UserInputError(
                f"invalid {field_name}",
                f"{field_name}={value!r}",
                f"not valid JSON: {err.msg} at column {err.colno}",
                'write it as a JSON object: {"name": value, ...}',
            ) from None
    if not isinstance(value, dict):
        raise bad_value(
            field_name, value, "must be a mapping of keyword arguments", 'write it as a mapping: {"name": value, ...}'
        )
    return value


def load_causal_lm_config(name_or_path: str, role: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of a causal LM, read without any weights; errors name the `role` field and its value."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        where = "local folder" if os.path.isdir(name_or_path) else "path or hub id"
        raise UserInputError(
            "cannot load a model config",
            f"{role}={name_or_path!r}",
            f"from this {where}: {err}",
            "fix the path or hub id (offline, a hub model must be in the local cache)",
        ) from None
    if type(config) not in AutoModelForCausalLM._model_mapping and not trust_remote_code:
        raise UserInputError(
            "not a causal language model",
            f"{role}={name_or_path!r}",
            f"it is a {config.model_type!r} model",
            "use a model AutoModelForCausalLM loads",
        )
    return config


def load_causal_lm(name_or_path: str, role: str, **init_kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` with errors that say which model (`role`) failed and why.

    Weights that do not match the config (tensors missing from the files, which transformers initialises randomly,
    or tensors the model has no place for) are refused: a partly random model would train without a word.
    """
    kwargs = resolve_dtype(init_kwargs)
    config = load_causal_lm_config(name_or_path, role, kwargs.get("trust_remote_code", False))
    check_weight_files(name_or_path, role, config)
    model, info = AutoModelForCausalLM.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    _refuse_mismatch(name_or_path, role, info["missing_keys"], info["unexpected_keys"])
    return model


def _refuse_mismatch(name_or_path: str, role: str, missing, unexpected) -> None:
    if not missing and not unexpected:
        return
    parts = []
    for what, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            parts.append(f"{len(keys)} tensors {what} ({shown})")
    raise UserInputError(
        "weights that do not match config.json",
        f"{role}={name_or_path!r}",
        f"{', and '.join(parts)}: transformers would initialise missing tensors randomly and drop unexpected ones",
        "use the config.json the weights were saved with, or download the model again",
    )


def _safetensors_files(folder: str, role: str) -> list[str]:
    """The safetensors files of a local model folder (those its index names, or `model.safetensors`); [] when it
    holds weights in another format only. No weights at all is an error."""
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise UserInputError(
                "model weight index cannot be read",
                f"{role}={folder!r}",
                f"{SAFE_WEIGHTS_INDEX_NAME}: {err}",
                "download the model again",
            ) from None
        absent = [name for name in shards if not os.path.isfile(os.path.join(folder, name))]
        if absent:
            raise UserInputError(
                "model weight files missing",
                f"{role}={folder!r}",
                f"{len(absent)} files named by {SAFE_WEIGHTS_INDEX_NAME} are not there ({', '.join(absent[:3])})",
                "download the model again",
            )
        return [os.path.join(folder, name) for name in shards]
    if os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
        return [os.path.join(folder, SAFE_WEIGHTS_NAME)]
    if not any(os.path.isfile(os.path.join(folder, name)) for name in _OTHER_WEIGHT_FILES):
        raise UserInputError(
            "no model weights",
            f"{role}={folder!r}",
            f"the folder holds none of {', '.join(_WEIGHT_FILES)}",
            "download the model again, or point to the folder that holds its weights",
        )
    return []


def check_weight_files(name_or_path: str, role: str, config: PretrainedConfig) -> None:
    """A local model folder's safetensors headers (no tensor data is read) against the tensors its config builds:
    a missing or unreadable file, or missing or unexpected tensors, are one-line errors naming the `role` field.

    Hub ids are not checked (they may not be downloaded yet), and neither are the tensor names of models whose
    checkpoints transformers converts on load (fused MoE experts: the names in the files are not the model's), of
    remote code, or of models that cannot be built on the meta device; `load_causal_lm` checks those when it loads
    them.
    """
    if not os.path.isdir(name_or_path):
        return
    present = set()
    for path in _safetensors_files(name_or_path, role):
        try:
            with safe_open(path, "pt") as f:
                present.update(f.keys())
        except Exception as err:  # safetensors raises its own error types for truncated or foreign files
            raise UserInputError(
                "model weight file cannot be read",
                f"{role}={name_or_path!r}",
                f"{os.path.basename(path)}: {err}",
                "download the model again",
            ) from None
    if not present:
        return
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is None:
        return
    # On the meta device: the tensors' names, shapes and ties, no memory and no initialisation.
    try:
        with torch.device("meta"):
            model = model_class(config)
    except Exception:  # a model that cannot be built on the meta device: the load checks it instead
        return
    if get_model_conversion_mapping(model, add_legacy=False):
        return
    # The renames transformers applies to every checkpoint (`LayerNorm.gamma` is `LayerNorm.weight`, ...).
    for renaming in get_checkpoint_conversion_mapping("legacy") or []:
        for source, target in zip(renaming.source_patterns, renaming.target_patterns):
            present = {re.sub(source, target, key) for key in present}
    state = model.state_dict(keep_vars=True)  # the parameters themselves: tied names share one object
    prefix = f"{model.base_model_prefix}."
    if not any(k.startswith(prefix) for k in present) and any(k.startswith(prefix) for k in state):
        # Checkpoints of the base model (e.g. the hub's `gpt2`) name tensors without the prefix.
        present = {k if k in state else prefix + k for k in present}
    # A tied tensor (the LM head sharing the embedding) is stored once, under any one of its names.
    names_of = {}
    for name, tensor in state.items():
        names_of.setdefault(id(tensor), []).append(name)
    missing = [
        name
        for name, tensor in state.items()
        if not any(n in present for n in names_of[id(tensor)])
        and not _ignored(name, model._keys_to_ignore_on_load_missing)
    ]
    unexpected = [
        name for name in present - state.keys() if not _ignored(name, model._keys_to_ignore_on_load_unexpected)
    ]
    _refuse_mismatch(name_or_path, role, missing, unexpected)


def _ignored(name: str, patterns) -> bool:
    return any(re.search(pattern, name) for pattern in patterns or ())


def output_width(model: PreTrainedModel) -> int:
    """Number of logits the model produces per position."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        # A DeepSpeed ZeRO-3 parameter outside its module's forward is an empty partition (`shape` [0]); `ds_shape`
        # keeps the full one.
        return getattr(head.weight, "ds_shape", head.weight.shape)[0]
    return model.config.get_text_config().vocab_size


def _differ_by_padding(a: int, b: int) -> bool:
    small, large = sorted((a, b))
    return any(large % m == 0 and large - small < m for m in _PAD_MULTIPLES)


def check_vocabularies(student: PreTrainedModel, teacher: PreTrainedModel, tokenizer_size: int | None) -> int:
    """Raise if teacher and student cannot share a vocabulary; return the number of logits the divergence uses."""
    return check_vocab_sizes(output_width(student), output_width(teacher), tokenizer_size)


def check_vocab_sizes(width_s: int, width_t: int, tokenizer_size: int | None) -> int:
    """The logit widths of student and teacher may differ only by padding rows, and with a tokenizer both need a
    logit for each of its `tokenizer_size` tokens. Returns the number of logits the divergence uses."""
    if width_s != width_t and not _differ_by_padding(width_s, width_t):
        raise UserInputError(
            "vocabulary mismatch",
            "model_name_or_path, teacher_model_name_or_path",
            f"student vocab size {width_s} and teacher vocab size {width_t} differ by more than embedding padding",
            "distil between models that share a tokenizer, or set cross_tokenizer: uld or aligned for a teacher "
            "with its own",
        )
    common = min(width_s, width_t)
    if tokenizer_size is not None and common < tokenizer_size:
        raise UserInputError(
            "vocabulary mismatch",
            "tokenizer_name_or_path",
            f"the tokenizer has {tokenizer_size} tokens but the student has {width_s} logits, the teacher {width_t}",
            "use the models' own tokenizer: both need one logit per token",
        )
    return common


def check_same_tokenizer(student_tokenizer, teacher_tokenizer) -> None:
    """Distillation compares distributions id by id: both tokenizers must map every token to the same id."""
    vocab_s, vocab_t = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if vocab_s == vocab_t:
        return
    differing = sorted(t for t in vocab_s.keys() | vocab_t.keys() if vocab_s.get(t) != vocab_t.get(t))
    examples = ", ".join(f"{t!r}: {vocab_s.get(t)} vs {vocab_t.get(t)}" for t in differing[:3])
    raise UserInputError(
        "teacher and student tokenizers differ",
        "tokenizer_name_or_path, teacher_model_name_or_path",
        f"{len(differing)} tokens map to different ids (student vs teacher: {examples}; {len(vocab_s)} vs "
        f"{len(vocab_t)} tokens)",
        "distil between models that share one vocabulary, or set cross_tokenizer: uld or aligned for a teacher "
        "with its own",
    )
