"""The files of a teacher cache (`cache_builder`): its manifest and its shards, read and checked without
loading a model, so that a damaged or edited cache is refused before any compute (by `hf-distill train` and
`hf-distill check` alike)."""

import json
import os
from typing import NamedTuple

from datasets import Dataset, load_from_disk

from ..user_errors import UserInputError

MANIFEST = "manifest.json"
REBUILD = "delete the folder and rebuild it with hf-distill cache-teacher"
# What a manifest holds, and the types a reader relies on (None where the entry may be null).
MANIFEST_TYPES = {
    "teacher_model_name_or_path": list,
    "teacher_ensemble": (str, type(None)),
    "teacher_weights": (list, type(None)),
    "tokenizer_vocabulary_sha256": str,
    "dataset_fingerprint": str,
    "max_length": int,
    "top_k": int,
    "num_examples": int,
    "shard_size": int,
}


def shard_path(cache_dir: str, index: int) -> str:
    return os.path.join(cache_dir, f"shard-{index:05d}")


def read_manifest(cache_dir: str) -> dict:
    """The manifest of the cache in `cache_dir`; an error naming the file (and line) if it is missing, does not parse
    as JSON, or lacks an entry or holds one of another type (an edited manifest)."""
    path = os.path.join(cache_dir, MANIFEST)
    if not os.path.isfile(path):
        raise UserInputError(
            "no teacher cache",
            f"teacher_cache_dir={cache_dir!r}",
            f"it has no {MANIFEST}",
            "build it with hf-distill cache-teacher (or fix teacher_cache_dir)",
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as err:
        raise UserInputError("teacher cache manifest is not JSON", f"{path}:{err.lineno}", err.msg, REBUILD) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError("teacher cache manifest cannot be read", path, str(err), REBUILD) from None
    if not isinstance(manifest, dict):
        raise UserInputError(
            "teacher cache manifest was edited", path, f"it holds a {type(manifest).__name__}, not a mapping", REBUILD
        )
    missing = [key for key in MANIFEST_TYPES if key not in manifest]
    if missing:
        raise UserInputError("teacher cache manifest was edited", path, f"it lacks {', '.join(missing)}", REBUILD)
    for key, types in MANIFEST_TYPES.items():
        # bool is an int to isinstance: `top_k: true` is an edit too.
        if not isinstance(manifest[key], types) or isinstance(manifest[key], bool):
            raise UserInputError(
                "teacher cache manifest was edited",
                path,
                f"{key} is {manifest[key]!r}, a {type(manifest[key]).__name__}",
                REBUILD,
            )
    for key in ("top_k", "shard_size", "max_length"):
        if manifest[key] < 1:
            raise UserInputError("teacher cache manifest was edited", path, f"{key} is {manifest[key]}", REBUILD)
    if manifest["num_examples"] < 0:
        raise UserInputError(
            "teacher cache manifest was edited", path, f"num_examples is {manifest['num_examples']}", REBUILD
        )
    return manifest


def read_shards(cache_dir: str, manifest: dict) -> list[Dataset]:
    """Every shard the manifest names, opened (memory-mapped, not read): an error naming the first one that is
    missing, cannot be opened, or holds another number of rows or another top_k than the manifest says."""
    num_examples, shard_size, top_k = manifest["num_examples"], manifest["shard_size"], manifest["top_k"]
    n_shards = -(-num_examples // shard_size)
    missing = [i for i in range(n_shards) if not os.path.isdir(shard_path(cache_dir, i))]
    if missing:
        first = os.path.basename(shard_path(cache_dir, missing[0]))
        raise UserInputError(
            "teacher cache is incomplete",
            f"teacher_cache_dir={cache_dir!r}",
            f"{len(missing)} of {n_shards} shards missing (the first: {first})",
            "rerun hf-distill cache-teacher to finish it",
        )
    shards = []
    for index in range(n_shards):
        path = shard_path(cache_dir, index)
        try:
            shard = load_from_disk(path)
        except Exception as err:  # datasets and pyarrow raise many types for a truncated or garbled file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserInputError("teacher cache shard cannot be read", path, first, REBUILD) from None
        rows = min(shard_size, num_examples - index * shard_size)
        if not isinstance(shard, Dataset) or shard.num_rows != rows:
            found = shard.num_rows if isinstance(shard, Dataset) else type(shard).__name__
            raise UserInputError(
                "teacher cache shard does not match its manifest", path, f"{found} rows, the manifest says {rows}",
                REBUILD,
            )  # fmt: skip
        if rows:
            first = shard[0]
            if len(first["teacher_topk_ids"]) != top_k * len(first["teacher_tail_logprob"]):
                raise UserInputError(
                    "teacher cache shard does not match its manifest",
                    path,
                    f"its first row holds {len(first['teacher_topk_ids'])} top-k ids for "
                    f"{len(first['teacher_tail_logprob'])} target tokens, not top_k={top_k} each",
                    REBUILD,
                )
        shards.append(shard)
    return shards


class StoredCache(NamedTuple):
    """A teacher cache read and checked once (its manifest, then every shard it names, opened memory-mapped), and
    handed to whoever needs it: the model checks (its `top_k`), and the train split it is attached to."""

    cache_dir: str
    manifest: dict
    shards: list[Dataset]


def open_cache(cache_dir: str) -> StoredCache:
    """The cache in `cache_dir`, its manifest and shards checked (`read_manifest`, `read_shards`)."""
    manifest = read_manifest(cache_dir)
    return StoredCache(cache_dir, manifest, read_shards(cache_dir, manifest))
