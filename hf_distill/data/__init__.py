"""The data of a run: raw datasets from local files or the hub (`raw_dataset`), their rows tokenized and laid out for
training (`datasets`: formats, prompts, `DistillDataCollator`), and for a teacher with its own tokenizer the rows
rendered twice and aligned span by span (`cross_tokenization`, `token_alignment`).

`from hf_distill.data import DistillDataCollator, prepare_datasets` keeps working (the module of earlier versions)."""

from .datasets import DistillDataCollator, detect_format, prepare_datasets, split_prompt, tokenize_dataset

__all__ = ["DistillDataCollator", "detect_format", "prepare_datasets", "split_prompt", "tokenize_dataset"]
