"""Generation during evaluation (`eval_generate`): the greedy answer of every eval prompt, scored against the
example's reference completion with the metrics `hf-distill evaluate` reports (exact match, token F1)."""

import math

from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from transformers import GenerationConfig

from .data import split_prompt
from .generation import generate
from .metric_names import EXACT_MATCH, TOKEN_F1
from .metrics.answers import exact_match, token_f1


def generation_metrics(
    model: nn.Module,
    tokenizer,
    examples,
    max_new_tokens: int,
    batch_size: int,
    accelerator: Accelerator,
    synced_gpus: bool,
) -> dict[str, float]:
    """`exact_match` and `token_f1` of the greedy completions of `examples` (rows with `input_ids` and `labels`)
    against their references (the last run of target tokens), over every process (a collective: call on all).

    Each process completes every `num_processes`-th example; all run the same number of batches (the last padded
    with a repeat), which `synced_gpus` needs, and the gathered answers are put back in example order."""
    pairs = [split_prompt(e["input_ids"], e["labels"]) for e in examples]
    per_process = math.ceil(len(pairs) / accelerator.num_processes)
    indices = range(accelerator.process_index, per_process * accelerator.num_processes, accelerator.num_processes)
    mine = [min(i, len(pairs) - 1) for i in indices]
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    answers = []
    for start in range(0, len(mine), batch_size):
        rows = mine[start : start + batch_size]
        completions = generate(model, [pairs[i][0] for i in rows], config, seed=0, synced_gpus=synced_gpus)
        answers += [
            (i, tokenizer.decode(t, skip_special_tokens=True).strip()) for i, t in zip(rows, completions.tokens)
        ]
    predictions = dict(gather_object(answers))
    order = range(len(pairs))
    predicted = [predictions[i] for i in order]
    references = [tokenizer.decode(pairs[i][1], skip_special_tokens=True).strip() for i in order]
    return {EXACT_MATCH: exact_match(predicted, references), TOKEN_F1: token_f1(predicted, references)}
