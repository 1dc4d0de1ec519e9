"""Generation during evaluation (`eval_generate`): the greedy answer of every eval prompt, scored against the
example's reference completion with the metrics `hf-distill evaluate` reports (exact match, token F1)."""

import math
from collections.abc import Callable

from accelerate import Accelerator
from accelerate.utils import gather_object

from ..data.datasets import split_prompt
from ..metrics.answers import exact_match, token_f1
from ..metrics.names import EXACT_MATCH, TOKEN_F1


def generation_metrics(
    answer: Callable[[list[list[int]]], list[str]], tokenizer, examples, accelerator: Accelerator
) -> dict[str, float]:
    """`exact_match` and `token_f1` of the greedy completions of `examples` (rows with `input_ids` and `labels`)
    against their references (the last run of target tokens), over every process (a collective: call on all).

    `answer` decodes the greedy answers of token-id prompts, in order (the run's generation backend:
    `hf_distill.generation.backends`, whose `hf` one runs `greedy.greedy_generate`, the generation of `hf-distill
    evaluate`). Each process completes every `num_processes`-th example; all complete as many prompts (the last
    share padded with a repeat), so they run as many batches, which `synced_gpus` needs, and the gathered answers are
    put back in example order."""
    pairs = [split_prompt(e["input_ids"], e["labels"]) for e in examples]
    per_process = math.ceil(len(pairs) / accelerator.num_processes)
    indices = range(accelerator.process_index, per_process * accelerator.num_processes, accelerator.num_processes)
    mine = [min(i, len(pairs) - 1) for i in indices]
    prompts = [pairs[i][0] for i in mine]
    answers = list(zip(mine, answer(prompts)))
    predictions = dict(gather_object(answers))
    order = range(len(pairs))
    predicted = [predictions[i] for i in order]
    references = [tokenizer.decode(pairs[i][1], skip_special_tokens=True).strip() for i in order]
    return {EXACT_MATCH: exact_match(predicted, references), TOKEN_F1: token_f1(predicted, references)}
