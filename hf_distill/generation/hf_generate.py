"""transformers' `generate` over token ids: left-padded prompts in, each completion cut after its first stop token out.
The `hf` generation backend (`backends.HFBackend`) and greedy decoding (`greedy.py`) both run it."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig


@dataclass
class Completions:
    """Generated completions: token ids up to and including the end-of-sequence token, and whether each was cut at
    `max_new_tokens` without one."""

    tokens: list[list[int]]
    truncated: list[bool]


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: list[list[int]],
    generation_config: GenerationConfig,
    seed: int,
    synced_gpus: bool,
) -> Completions:
    """Complete left-padded `prompt_ids` with `model` in eval mode, sampling from `seed`; the model's training mode
    and the global random state are left as they were."""
    pad, eos = generation_config.pad_token_id, generation_config.eos_token_id
    stops = set(eos) if isinstance(eos, list) else {eos}
    device = next(model.parameters()).device
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    was_training = model.training
    model.eval()
    try:
        # Forked: sampling draws from its own seeded state, and training's dropout and data order see no difference.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=generation_config,
                synced_gpus=synced_gpus,
            )
    finally:
        model.train(was_training)
    completions = Completions([], [])
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), None)
        completions.tokens.append(row[:end])
        completions.truncated.append(end is None and len(row) == generation_config.max_new_tokens)
    return completions
