"""Greedy completions of tokenized prompts, batched with left padding and timed: what `hf-distill evaluate`
generates, reusable by any benchmark that scores answers (with `hf_distill.metrics.answers.exact_match`)."""

import time
from typing import NamedTuple

from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..user_errors import UserInputError
from .hf_generate import generate


class GreedyRun(NamedTuple):
    """Decoded completions (special tokens skipped, stripped), in the prompts' order; the number of generated tokens
    (up to and including each end-of-sequence token); and the seconds `generate` took, summed over batches."""

    texts: list[str]
    new_tokens: int
    seconds: float


def greedy_eos(model, tokenizer) -> int | list[int]:
    """Where a greedy answer stops: the model's `generation_config.eos_token_id` (one id or several), else the
    tokenizer's."""
    eos = model.generation_config.eos_token_id
    return eos if eos is not None else tokenizer.eos_token_id


def greedy_generate(
    model,
    tokenizer,
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 32,
    desc: str = "generating",
    progress: bool = True,
    synced_gpus: bool = False,
) -> GreedyRun:
    """Greedy decoding (`do_sample=False`, the rest of the model's `generation_config` kept) of every prompt, in
    left-padded batches (`hf_generate.generate`, with the KV cache); prompts are batched in order of length
    so that little padding is generated over. `progress=False` hides the progress bar (a launch shows the main
    process's only); `synced_gpus` is for sharded models (FSDP, DeepSpeed ZeRO-3), whose ranks must run as many
    batches each. A tokenizer without a pad token pads with its end-of-sequence token (padding is masked out)."""
    if max_new_tokens < 1:
        raise UserInputError(f"max_new_tokens must be >= 1, got max_new_tokens={max_new_tokens}")
    eos = greedy_eos(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, use_cache=True
    )
    order = sorted(range(len(prompts_ids)), key=lambda i: len(prompts_ids[i]))
    texts: list[str] = [""] * len(prompts_ids)
    new_tokens, seconds = 0, 0.0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        began = time.perf_counter()
        # Greedy: the seed draws nothing.
        completions = generate(model, [prompts_ids[i] for i in rows], config, seed=0, synced_gpus=synced_gpus)
        seconds += time.perf_counter() - began
        for i, tokens in zip(rows, completions.tokens):
            new_tokens += len(tokens)
            texts[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return GreedyRun(texts, new_tokens, seconds)


def greedy_completions(model, tokenizer, prompts_ids: list[list[int]], max_new_tokens: int) -> list[str]:
    """The decoded greedy completion of each prompt (token ids), in order."""
    return greedy_generate(model, tokenizer, prompts_ids, max_new_tokens).texts
