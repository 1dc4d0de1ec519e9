"""Loading a dataset in one of the formats TRL SFT users have, and tokenizing it with the loss mask of its format."""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from ..arguments.script_arguments import DataArguments
from ..losses import IGNORE_INDEX
from ..user_errors import UserInputError
from .cross_tokenization import CROSS_BATCH_KEYS, CROSS_COLUMNS, cross_tokenize, layout_cross_tokenized
from .raw_dataset import load_raw_dataset

logger = logging.getLogger(__name__)

FORMAT_COLUMNS = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "prompt": ("prompt",),
}
# Columns of a train split with a cached teacher (`teachers.cache_builder`): per example, n * K top-k ids, n * K
# log-probabilities and n tails for its n target tokens; and the batch keys the collator lays them out under,
# `(B, L - 1, K)` and `(B, L - 1)`, aligned with `labels[:, 1:]`.
CACHE_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logprob")
# Batch keys the trainer reads itself, never passed to a model's forward: targets, example ids, a cached teacher's
# top-k and a cross-tokenizer teacher's own tokens and spans.
TRAINER_KEYS = frozenset({"labels", "id", *CACHE_COLUMNS, *CROSS_BATCH_KEYS})


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What a model's forward takes from `batch`: every key but `TRAINER_KEYS`, and no KV cache. No forward of the
    loss needs one, and a model building one (a teacher whose config says use_cache, as most hub models do) takes
    the batch for a generation step: transformers then does not split a padding-free packed row (TRL's packing)
    into its sequences, and they attend to each other."""
    return {**{k: v for k, v in batch.items() if k not in TRAINER_KEYS}, "use_cache": False}


def detect_format(dataset: Dataset, declared: str, split: str) -> str:
    """The format to tokenize with; raises naming the columns found and expected when they do not fit."""
    columns = set(dataset.column_names)
    if declared == "auto":
        for fmt in ("messages", "prompt_completion", "text", "prompt"):
            if set(FORMAT_COLUMNS[fmt]) <= columns:
                return fmt
        expected = " or ".join(f"{list(c)}" for c in FORMAT_COLUMNS.values())
        raise UserInputError(
            "dataset in no known format",
            f"split {split!r}",
            f"its columns are {sorted(columns)}; expected {expected}",
            "rename its columns, or set dataset_format",
        )
    missing = set(FORMAT_COLUMNS[declared]) - columns
    if missing:
        raise UserInputError(
            "dataset lacks the columns of its format",
            f"dataset_format={declared!r}, split {split!r}",
            f"it needs columns {list(FORMAT_COLUMNS[declared])}, the split has {sorted(columns)}",
            "rename its columns, or set dataset_format to the format the data is in (or auto)",
        )
    return declared


def _with_eos(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def _text_example(example: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    ids = _with_eos(tokenizer(example["text"])["input_ids"], tokenizer)
    return ids, list(ids)


def _prompt_completion_example(example: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    prompt = tokenizer(example["prompt"])["input_ids"]
    completion = _with_eos(tokenizer(example["completion"], add_special_tokens=False)["input_ids"], tokenizer)
    return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion


def _prompt_example(example: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    ids = tokenizer(example["prompt"])["input_ids"]
    return ids, [IGNORE_INDEX] * len(ids)


# Roles the chat templates of hub models know; another name (ShareGPT's `human`/`gpt`) renders as nothing or fails.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")


def _check_turns(messages: list) -> None:
    """Each turn is a mapping with a known `role` and a `content`: a chat template renders a missing content as
    empty, so turns written with `text` instead would train on empty answers without a word. Arrow gives every turn
    of a column the keys of all turns, so a key holding None counts as missing. The ValueError is the why of the
    example's error (`tokenize_dataset`)."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"turn {i} is a {type(message).__name__}, not a mapping with 'role' and 'content'")
        keys = sorted(k for k, v in message.items() if v is not None)
        if message.get("role") not in CHAT_ROLES:
            raise ValueError(
                f"turn {i} has role={message.get('role')!r}, not one of {', '.join(CHAT_ROLES)} (its keys: {keys})"
            )
        if message.get("content") is None and not message.get("tool_calls"):
            raise ValueError(
                f"turn {i} (role {message['role']!r}) has no 'content', which each turn needs (its keys: {keys})"
            )


def _messages_example(example: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    messages = example["messages"]
    _check_turns(messages)
    if messages and messages[-1]["role"] != "assistant":
        # A conversation waiting for the assistant's answer is a prompt: no target, and the generation prompt ends it.
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        return list(ids), [IGNORE_INDEX] * len(ids)
    if "{% generation %}" in (tokenizer.chat_template or ""):
        out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])
        return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, out["assistant_masks"])]
    # Templates without generation markers (most hub models'): an assistant turn is what rendering it adds to the
    # conversation before it, rendered with the generation prompt.
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(
            tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, return_dict=True)["input_ids"]
        )
        end = len(tokenizer.apply_chat_template(messages[: i + 1], return_dict=True)["input_ids"])
        labels[start:end] = ids[start:end]
    return ids, labels


_TOKENIZERS = {
    "text": _text_example,
    "prompt_completion": _prompt_completion_example,
    "messages": _messages_example,
    "prompt": _prompt_example,
}


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    fmt: str,
    args: DataArguments,
    split: str,
    keep_prompts: bool = False,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> Dataset:
    """`input_ids` and `labels` (-100 where the format puts no loss), truncated to `max_length`. Examples left
    without any target token are dropped, unless `keep_prompts` (on-policy training, which only needs the prompts).
    Both counts are reported; an empty result is an error. With a `teacher_tokenizer` of another vocabulary, each
    example also gets the teacher's tokens and the aligned spans (`hf_distill.data.cross_tokenization.CROSS_COLUMNS`);
    the target tokens in no aligned span are counted and reported."""
    build = _TOKENIZERS[fmt]
    max_length = args.max_length

    has_ids = "id" in dataset.column_names

    def tokenize(example, index):
        try:
            ids, labels = build(example, tokenizer)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            name = f"example {index}" + (f", id {example['id']!r}" if has_ids else "")
            raise UserInputError(
                "example cannot be read",
                f"split {split!r}, {name}",
                f"it cannot be read as {fmt!r}: {err}",
                "fix the example, or set dataset_format to the format of the data",
            ) from None
        out = {
            "id": str(example["id"]) if has_ids else str(index),
            "input_ids": ids[:max_length],
            "labels": labels[:max_length],
            "truncated": len(ids) > max_length,
            # The first label is never predicted (causal shift): a target needs a valid label after position 0.
            "has_target": any(label != IGNORE_INDEX for label in labels[1:max_length]),
        }
        if teacher_tokenizer is not None:
            try:
                out.update(cross_tokenize(example, fmt, tokenizer, teacher_tokenizer, ids, labels, max_length))
            except (TypeError, ValueError, KeyError, AttributeError) as err:
                name = f"example {index}" + (f", id {example['id']!r}" if has_ids else "")
                raise UserInputError(
                    "example cannot be tokenized for the teacher",
                    f"split {split!r}, {name}",
                    str(err),
                    "fix the example, or check teacher_tokenizer_name_or_path",
                ) from None
        return out

    tokenized = dataset.map(
        tokenize,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=args.dataset_num_proc,
        desc=f"Tokenizing {split}",
    )
    truncated = sum(tokenized["truncated"])
    if truncated:
        logger.warning(
            f"split {split!r}: {truncated} of {len(tokenized)} examples truncated to max_length={max_length}"
        )
    kept = tokenized
    if not keep_prompts:
        kept = tokenized.filter(lambda e: e["has_target"], num_proc=args.dataset_num_proc, desc=f"Filtering {split}")
    if len(kept) < len(tokenized):
        logger.warning(f"split {split!r}: dropped {len(tokenized) - len(kept)} examples with no target token")
    if len(kept) == 0:
        raise UserInputError(
            "no example with a target token",
            f"split {split!r}",
            f"every label of its {len(tokenized)} examples is masked for dataset_format={fmt!r}",
            "check the data's format and roles (prompt-only data trains with lmbda=1.0 only)",
        )
    if teacher_tokenizer is not None:
        unaligned = sum(kept["unaligned_targets"])
        targets = sum(sum(label != IGNORE_INDEX for label in labels[1:]) for labels in kept["labels"])
        logger.warning(
            f"split {split!r}: {unaligned} of {targets} target tokens lie in no span aligned with the teacher's "
            "tokens; they get the CE only"
        )
        kept = kept.remove_columns(["unaligned_targets"])
    return kept.remove_columns(["truncated", "has_target"])


def select_splits(
    raw: DatasetDict, args: DataArguments, prompts_only: bool = False
) -> list[tuple[Dataset, str, str, bool]]:
    """The train and (optional) eval splits of `raw` as `(dataset, split, format, keep_prompts)`, after the checks
    that need no tokenizer: the split exists, is not empty, and has the columns of its format. With `prompts_only`
    (`lmbda: 1.0`: the student writes every completion) the train split may hold prompts without completions; the
    eval split, scored on its references, may not."""
    splits = [(args.dataset_train_split, args.max_train_samples, "dataset_train_split")]
    if args.dataset_eval_split is not None:
        splits.append((args.dataset_eval_split, args.max_eval_samples, "dataset_eval_split"))
    selected = []
    for split, limit, field_name in splits:
        if split not in raw:
            raise UserInputError(
                "no such split",
                f"{field_name}={split!r}",
                f"{args.dataset_name!r} has the splits {list(raw)}",
                f"set {field_name} to one of them",
            )
        dataset = raw[split]
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        if len(dataset) == 0:
            raise UserInputError(
                "empty split", f"{field_name}={split!r}", f"{args.dataset_name!r} holds no example in it",
                "add examples, or choose another split",
            )  # fmt: skip
        fmt = detect_format(dataset, args.dataset_format, split)
        keep_prompts = prompts_only and field_name == "dataset_train_split"
        if fmt == "prompt" and not keep_prompts:
            needs = "lmbda=1.0 (every step on-policy)" if field_name == "dataset_train_split" else "a completion"
            raise UserInputError(
                "prompts without completions",
                f"{field_name}={split!r}",
                f"the split holds prompts only (column 'prompt', no 'completion'); it needs {needs}",
                "add a 'completion' column" + (", or set lmbda: 1.0" if field_name == "dataset_train_split" else ""),
            )
        selected.append((dataset, split, fmt, keep_prompts))
    return selected


def prepare_datasets(
    args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    prompts_only: bool = False,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[Dataset, Dataset | None]:
    """Tokenized train and (optional) eval datasets (`select_splits`). A `teacher_tokenizer` (cross-tokenizer
    distillation) tokenizes every example for the teacher too."""
    prepared = [
        tokenize_dataset(dataset, tokenizer, fmt, args, split, keep_prompts, teacher_tokenizer)
        for dataset, split, fmt, keep_prompts in select_splits(load_raw_dataset(args), args, prompts_only)
    ]
    return prepared[0], prepared[1] if len(prepared) > 1 else None


def split_prompt(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """An example's prompt, its tokens before its last run of target labels, and that run (its completion: the
    prompt of `prompt_completion` data, the conversation before the last assistant turn of `messages` data). An
    example without a target is all prompt."""
    targets = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not targets:
        return list(input_ids), []
    start = end = targets[-1] + 1
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return list(input_ids[:start]), list(input_ids[start:end])


def layout_cached_teacher(labels: torch.Tensor, features: list[dict[str, Any]], ids: list | None) -> dict:
    """The cached top-k of each example (K ids and log-probabilities, flat, and one tail per target token) scattered
    onto the padded `labels[:, 1:]`; positions that are no target hold zeros, which the loss never reads.

    The features' cached columns may be lists or numpy arrays (the numpy format `attach_teacher_cache` sets, which
    skips building Python lists); either way the whole batch is laid out with one masked assignment per column.
    """
    targets = labels[:, 1:] != IGNORE_INDEX
    counts = targets.sum(-1).tolist()
    k = next((len(f["teacher_topk_ids"]) // n for f, n in zip(features, counts) if n), 1)
    for row, (feature, n) in enumerate(zip(features, counts)):
        if len(feature["teacher_tail_logprob"]) != n or len(feature["teacher_topk_ids"]) != n * k:
            name = ids[row] if ids is not None else row
            raise UserInputError(
                f"example {name}: the teacher cache holds {len(feature['teacher_tail_logprob'])} target tokens but "
                f"its labels have {n}; the cache was built for other data"
            )
    out = {}
    for key, dtype, trailing in (
        ("teacher_topk_ids", torch.long, (k,)),
        ("teacher_topk_logprobs", torch.float32, (k,)),
        ("teacher_tail_logprob", torch.float32, ()),
    ):
        np_dtype = np.float32 if dtype.is_floating_point else np.int64
        values = np.concatenate([np.asarray(f[key], dtype=np_dtype) for f in features]).reshape(-1, *trailing)
        out[key] = torch.zeros(*targets.shape, *trailing, dtype=dtype)
        out[key][targets] = torch.from_numpy(values)
    return out


@dataclass
class DistillDataCollator:
    """Pads `input_ids`, `attention_mask` and `labels` (with -100) and passes the examples' `id`s through as a list,
    so per-example statistics can name them. A cached teacher's columns (`CACHE_COLUMNS`) become padded tensors, and
    so do a cross-tokenizer teacher's tokens and spans (`CROSS_COLUMNS`, the teacher's tokens padded with
    `teacher_pad_token_id`)."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None
    teacher_pad_token_id: int = 0

    def __post_init__(self):
        self._pad = DataCollatorForSeq2Seq(self.tokenizer, padding=True, pad_to_multiple_of=self.pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [f["id"] for f in features] if features and "id" in features[0] else None
        cached = bool(features) and CACHE_COLUMNS[0] in features[0]
        cross = bool(features) and CROSS_COLUMNS[0] in features[0]
        own = ("id", *CACHE_COLUMNS, *CROSS_COLUMNS)
        batch = self._pad([{k: v for k, v in f.items() if k not in own} for f in features])
        if cached:
            batch.update(layout_cached_teacher(batch["labels"], features, ids))
        if cross:
            length, side = batch["input_ids"].shape[1], self.tokenizer.padding_side
            batch.update(layout_cross_tokenized(features, length, side, self.teacher_pad_token_id))
        if ids is not None:
            batch["id"] = ids
        return batch
