"""The sampling settings mean what they say: `generation_top_k: 0` samples from the whole vocabulary, not from the
top 50 that transformers fills in for an unset top_k."""

import pytest
import torch
from testing_utils import tiny_llama
from transformers import GenerationConfig

from hf_distill import DistillConfig
from hf_distill.generation.hf_generate import generate


def ranks_of_sampled_tokens(generation_config: GenerationConfig) -> list[int]:
    """The rank, under the model's own distribution, of each token it sampled (0 = most likely)."""
    model = tiny_llama(seed=3, hidden=32, layers=1).eval()  # 64 tokens: ranks 50-63 exist
    generation_config.update(pad_token_id=0, eos_token_id=1, use_cache=True)
    prompts = [[5 + i, 9, 12] for i in range(8)]
    completions = generate(model, prompts, generation_config, seed=0, synced_gpus=False)
    ranks = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions.tokens):
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
            order = logits.argsort(dim=-1, descending=True)
            ranks += [int((order[i] == token).nonzero()) for i, token in enumerate(completion)]
    return ranks


def test_top_k_zero_samples_beyond_the_top_50(tmp_path):
    config = DistillConfig(
        output_dir=str(tmp_path), report_to=[], generation_temperature=8.0, generation_top_k=0, max_new_tokens=40
    )
    assert config.generation_config.top_k == 0
    ranks = ranks_of_sampled_tokens(config.generation_config)
    # At temperature 8 the tiny model's distribution is nearly flat: of ~300 tokens, ranks past 50 are ~20%.
    assert len(ranks) > 100 and max(ranks) >= 50, max(ranks)
    # The same settings with top_k unset, as it was passed before, never sample past rank 50: the check can fail.
    unset = config.generation_config
    unset.top_k = None
    assert max(ranks_of_sampled_tokens(unset)) < 50


def test_top_k_samples_among_the_k_most_likely_only(tmp_path):
    config = DistillConfig(
        output_dir=str(tmp_path), report_to=[], generation_temperature=8.0, generation_top_k=3, max_new_tokens=40
    )
    assert max(ranks_of_sampled_tokens(config.generation_config)) <= 2


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("num_return_sequences", 2, "each prompt gets one completion, its row's"),
        ("num_beams", 4, "beam search is not supported"),
        ("eos_token_id", 7, "completions end at the tokenizer's eos_token, which would overwrite it"),
        ("pad_token_id", 0, "generated batches are padded with the tokenizer's pad token"),
    ],
)
def test_generation_kwargs_that_change_the_pairing_are_refused(tmp_path, key, value, why):
    """Before: accepted, then overwritten by the tokenizer's ids, or completions no longer paired with prompts."""
    prefix = rf"^invalid generation_kwargs \(generation_kwargs\['{key}'\]={value}\): "
    with pytest.raises(ValueError, match=prefix + rf".*{why}.*; remove it$"):
        DistillConfig(output_dir=str(tmp_path), report_to=[], generation_kwargs={key: value})
    # Their defaults change nothing, and are accepted.
    DistillConfig(output_dir=str(tmp_path), report_to=[], generation_kwargs={"num_return_sequences": 1})
