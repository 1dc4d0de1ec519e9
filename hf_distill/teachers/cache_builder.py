"""Offline teachers: the teacher's top-k log-probabilities of every target token, computed once and stored on disk.

`hf-distill cache-teacher RECIPE.yaml --output_dir DIR --top_k K` writes `DIR/manifest.json` and `DIR/shard-NNNNN/`
(`datasets` datasets saved with `save_to_disk`, one row per training example, in the order of the tokenized train
split). A row holds, for each position whose next token is a target (labels[1:] != -100), the teacher's `top_k`
token ids (int32), their log-probabilities at temperature 1 and the log of the remaining mass (`tail_logprob`), over
the tokenizer's `len(tokenizer)` tokens. The ids and log-probabilities of a row's n targets are stored flat, n * top_k
values in target order: flat lists convert from Arrow to numpy in one piece, nested ones element by element, which
cost more than a training step. An ensemble of teachers is cached as its combined distribution at
temperature 1. Each shard is written under a temporary name and renamed when complete, so a killed build leaves only
whole shards, and a rerun skips them. Under `accelerate launch` with N processes, process i writes shards i, i + N,
i + 2N, ..., each with its own copy of the teacher.

Training with `teacher_cache_dir: DIR` loads no teacher: `attach_teacher_cache` checks the manifest against the
recipe and adds the cached columns to the train split, `DistillDataCollator` lays them out as `(B, L - 1, K)`
tensors, and the trainer takes `sparse_distillation_loss`.
"""

import hashlib
import json
import os

import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, List, Value, concatenate_datasets

from ..arguments.script_arguments import DataArguments
from ..config import DistillConfig
from ..data.datasets import CACHE_COLUMNS
from ..losses import IGNORE_INDEX
from ..run.atomic_write import atomic_write
from ..user_errors import UserInputError
from .cache_store import StoredCache, open_cache, read_manifest, shard_path
from .live import LiveTeacher

# Manifest entries that must equal the recipe's for a cache to be used; top_k and num_examples describe the cache.
_FEATURES = Features(
    {
        "id": Value("string"),
        "teacher_topk_ids": List(Value("int32")),
        "teacher_topk_logprobs": List(Value("float32")),
        "teacher_tail_logprob": List(Value("float32")),
    }
)
# max_length comes before the fingerprint: changing it changes the rows too, and the error should name the cause.
_CHECKED = (
    "teacher_model_name_or_path",
    "teacher_ensemble",
    "teacher_weights",
    "tokenizer_vocabulary_sha256",
    "max_length",
    "dataset_fingerprint",
)


def vocabulary_hash(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the tokenized rows themselves: unlike `datasets`' own fingerprint it does not depend on how the
    tokenizing function hashes, only on the ids and labels it produced."""
    digest = hashlib.sha256()
    for batch in dataset.select_columns(["id", "input_ids", "labels"]).iter(batch_size=1000):
        digest.update(json.dumps(batch).encode())
    return digest.hexdigest()


def expected_manifest(data_args: DataArguments, config: DistillConfig, tokenizer, train_dataset: Dataset) -> dict:
    teachers = config.teacher_paths
    ensemble = len(teachers) > 1
    return {
        "teacher_model_name_or_path": teachers,
        "teacher_ensemble": config.teacher_ensemble if ensemble else None,
        "teacher_weights": config.ensemble_weights(len(teachers)) if ensemble else None,
        "tokenizer_vocabulary_sha256": vocabulary_hash(tokenizer),
        "dataset_fingerprint": dataset_fingerprint(train_dataset),
        "max_length": data_args.max_length,
    }


def check_manifest(found: dict, expected: dict, cache_dir: str) -> None:
    for key in _CHECKED:
        if found.get(key) != expected[key]:
            raise UserInputError(
                "teacher cache built for another recipe",
                f"teacher_cache_dir={cache_dir!r}",
                f"its {key} is {found.get(key)!r}, the recipe's is {expected[key]!r}",
                "rebuild it with hf-distill cache-teacher (into another folder, or after deleting this one)",
            )


@torch.no_grad()
def teacher_topk(teacher: LiveTeacher, rows: list[dict], top_k: int, pad_id: int) -> dict[str, list]:
    """The cached columns of `rows` (with `input_ids` and `labels`), from one teacher forward pass."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.tensor([r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows])
    attention = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    device = next(teacher.models[0].parameters()).device
    log_p = teacher.log_probs({"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}).cpu()
    columns = {name: [] for name in CACHE_COLUMNS}
    for row, lp in zip(rows, log_p):
        valid = torch.tensor(row["labels"][1:]) != IGNORE_INDEX
        logprobs, ids = lp[: len(valid)][valid].topk(top_k, dim=-1)
        # The clamp keeps rounding (top-k summing to a hair over 1) from turning the tail into NaN: log(0) = -inf.
        tail = torch.log1p(-logprobs.exp().sum(-1).clamp(max=1.0))
        columns["teacher_topk_ids"].append(ids.to(torch.int32).flatten().tolist())
        columns["teacher_topk_logprobs"].append(logprobs.flatten().tolist())
        columns["teacher_tail_logprob"].append(tail.tolist())
    return columns


def write_shard(teacher, rows: Dataset, top_k: int, batch_size: int, tokenizer, cache_dir: str, index: int) -> None:
    """Shard `index` of the cache in `cache_dir`: the teacher's top-k of `rows`, `batch_size` rows a forward."""
    columns = {"id": rows["id"], **{name: [] for name in CACHE_COLUMNS}}
    for b in range(0, len(rows), batch_size):
        batch = rows.select(range(b, min(b + batch_size, len(rows)))).to_list()
        for name, values in teacher_topk(teacher, batch, top_k, tokenizer.pad_token_id).items():
            columns[name] += values
    save_shard(Dataset.from_dict(columns, features=_FEATURES), shard_path(cache_dir, index))


def cache_size(cache_dir: str) -> tuple[int, int]:
    """Bytes on disk of a finished cache and the number of target tokens it holds."""
    _, rows = load_teacher_cache(cache_dir)
    tokens = pc.sum(pc.list_value_length(rows.data.column("teacher_tail_logprob"))).as_py() or 0
    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(cache_dir) for name in names)
    return size, tokens


def cache_size_report(cache_dir: str) -> str:
    """One line: the cache's examples, target tokens, top_k and bytes on disk."""
    manifest = read_manifest(cache_dir)
    size, tokens = cache_size(cache_dir)
    return (
        f"cache {cache_dir}: {manifest['num_examples']} examples, {tokens} target tokens, top_k={manifest['top_k']}, "
        f"{size} bytes on disk ({size / max(tokens, 1):.0f} bytes per target token)"
    )


def save_shard(shard: Dataset, path: str) -> None:
    """`shard` saved to the folder `path` whole or not at all (`atomic_write`): a rerun skips only whole shards."""
    atomic_write(path, shard.save_to_disk)


def load_teacher_cache(cache_dir: str) -> tuple[dict, Dataset]:
    """The manifest and the cached rows, all shards in order; errors if the build did not finish or a file is
    damaged (`teacher_cache_files`)."""
    cache = open_cache(cache_dir)
    return cache.manifest, concatenate_datasets(cache.shards)


def attach_teacher_cache(
    data_args: DataArguments,
    config: DistillConfig,
    tokenizer,
    train_dataset: Dataset,
    cache: StoredCache | None = None,
) -> Dataset:
    """`train_dataset` plus the cached columns, after checking that the cache was built for this recipe. `cache` is
    the run's cache as `cache_store.open_cache` read it (read here when not given)."""
    cache_dir = config.teacher_cache_dir
    cache = cache or open_cache(cache_dir)
    manifest, rows = cache.manifest, concatenate_datasets(cache.shards)
    check_manifest(manifest, expected_manifest(data_args, config, tokenizer, train_dataset), cache_dir)
    attached = concatenate_datasets([train_dataset, rows.remove_columns("id")], axis=1)
    # Numpy arrays straight from Arrow: building nested Python lists of every row's top-k costs more than the step.
    return attached.with_format("numpy", columns=list(CACHE_COLUMNS), output_all_columns=True)
