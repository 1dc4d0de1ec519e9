"""The data of a run: raw datasets from local files or the hub (`raw_dataset`), their rows tokenized and laid out for
training (`datasets`: formats, prompts, `DistillDataCollator`), and for a teacher with its own tokenizer the rows
rendered twice and aligned span by span (`cross_tokenization`, `token_alignment`).

`from hf_distill.data import DistillDataCollator, prepare_datasets` keeps working (the module of earlier versions)."""

# The public names of the module of earlier versions, `hf_distill.data`.
from .datasets import (
    CACHE_COLUMNS,
    FORMAT_COLUMNS,
    DistillDataCollator,
    detect_format,
    layout_cached_teacher,
    prepare_datasets,
    select_splits,
    split_prompt,
    tokenize_dataset,
)

__all__ = [
    "CACHE_COLUMNS",
    "FORMAT_COLUMNS",
    "DistillDataCollator",
    "detect_format",
    "layout_cached_teacher",
    "prepare_datasets",
    "select_splits",
    "split_prompt",
    "tokenize_dataset",
]
