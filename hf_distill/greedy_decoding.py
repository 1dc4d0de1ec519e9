"""Greedy completions of tokenized prompts, batched with left padding and timed: what `hf-distill evaluate`
generates, reusable by any benchmark that scores answers (with `hf_distill.metrics.answers.exact_match`)."""

import time
from typing import NamedTuple

import torch
from tqdm.auto import tqdm


class GreedyRun(NamedTuple):
    """Decoded completions (special tokens skipped, stripped), in the prompts' order; the number of generated tokens
    (up to and including each end-of-sequence token); and the seconds `generate` took, summed over batches."""

    texts: list[str]
    new_tokens: int
    seconds: float


def greedy_generate(
    model, tokenizer, prompts_ids: list[list[int]], max_new_tokens: int, batch_size: int = 32, desc: str = "generating"
) -> GreedyRun:
    """Greedy decoding (`do_sample=False`, the rest of the model's `generation_config` kept) of every prompt, in
    left-padded batches; prompts are batched in order of length so that little padding is generated over."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got max_new_tokens={max_new_tokens}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set one (batched generation pads the prompts)")
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [tokenizer.eos_token_id])
    order = sorted(range(len(prompts_ids)), key=lambda i: len(prompts_ids[i]))
    texts: list[str] = [""] * len(prompts_ids)
    new_tokens, seconds = 0, 0.0
    device = next(model.parameters()).device
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        rows = order[start : start + batch_size]
        width = max(len(prompts_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            prompt = prompts_ids[i]
            ids[r, width - len(prompt) :] = torch.tensor(prompt)
            mask[r, width - len(prompt) :] = 1
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        seconds += time.perf_counter() - began
        for r, i in enumerate(rows):
            generated = out[r, width:].tolist()
            # After its end-of-sequence token a finished row is padded until the batch ends: not generated text.
            end = next((k + 1 for k, token in enumerate(generated) if token in eos), len(generated))
            new_tokens += end
            texts[i] = tokenizer.decode(generated[:end], skip_special_tokens=True).strip()
    return GreedyRun(texts, new_tokens, seconds)


def greedy_completions(model, tokenizer, prompts_ids: list[list[int]], max_new_tokens: int) -> list[str]:
    """The decoded greedy completion of each prompt (token ids), in order."""
    return greedy_generate(model, tokenizer, prompts_ids, max_new_tokens).texts
