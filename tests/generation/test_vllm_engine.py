"""VLLMEngine against transformers: the demo teacher's completions, weight syncs, seeds and sampling settings.

The engine tests need vLLM (`bash scripts/install_vllm.sh`, `python -m pytest -m vllm`) and skip without it; the
settings mapping is tested everywhere.
"""

import copy
import json
import os
import random
import sys

import pytest
import torch
from testing_utils import REPO_ROOT as ROOT

from hf_distill.generation import vllm_engine
from hf_distill.user_errors import UserInputError

DEMO = os.path.join(ROOT, "recipes", "demo")


def test_sampling_params_kwargs_maps_each_setting_one_to_one():
    kwargs = vllm_engine.sampling_params_kwargs(
        max_new_tokens=7,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        stop_token_ids=[2],
        seed=11,
        generation_kwargs={"repetition_penalty": 1.2, "min_new_tokens": 3, "min_p": 0.05, "eos_token_id": [5, 2]},
    )
    assert kwargs == dict(
        max_tokens=7,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        stop_token_ids=[2, 5],
        seed=11,
        detokenize=False,
        repetition_penalty=1.2,
        min_tokens=3,
        min_p=0.05,
    )
    # Settings that change nothing vLLM samples are dropped, not refused.
    assert vllm_engine.vllm_generation_kwargs({"pad_token_id": 0, "use_cache": True}) == {}


@pytest.mark.parametrize("key", ["num_beams", "no_repeat_ngram_size", "bad_words_ids", "typical_p"])
def test_generation_kwargs_vllm_cannot_honour_are_refused_in_one_line(key):
    with pytest.raises(UserInputError) as info:
        vllm_engine.vllm_generation_kwargs({key: 2})
    line = str(info.value)
    assert f"generation_kwargs[{key!r}]" in line and "\n" not in line and "repetition_penalty" in line


def test_require_vllm_names_the_setting_and_the_install_script(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(UserInputError) as info:
        vllm_engine.require_vllm("use_vllm=True")
    assert str(info.value).startswith("vLLM is not installed (use_vllm=True): ")
    assert str(info.value).endswith("; install it with: bash scripts/install_vllm.sh")


# --- The engine itself: vLLM installed -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    """The demo teacher (float32, eval mode), its tokenizer, and 8 eval prompts rendered with the chat template."""
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher"), dtype=torch.float32).eval()
    with open(os.path.join(DEMO, "data", "eval.jsonl")) as f:
        conversations = [json.loads(line)["messages"] for line in f][:8]
    prompts = [
        tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False)
        for messages in conversations
    ]
    return model, tokenizer, [list(p) for p in prompts]


@pytest.fixture(scope="module")
def engine(demo):
    """One engine for the module (vLLM starts in seconds, but once per process is enough), built from the teacher's
    weights in memory; the global random states around its start are recorded for the test that checks them."""
    model, tokenizer, _ = demo
    before = (random.getstate(), torch.get_rng_state())
    built = vllm_engine.VLLMEngine.from_model(model, tokenizer, max_model_len=128, dtype=torch.float32, seed=0)
    built.rng_kept = random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])
    return built


def hf_greedy(model, prompts, max_new_tokens, eos, **generation_kwargs):
    """transformers' greedy completions, one unpadded prompt at a time, cut after the first eos."""
    completions = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=0,
                **generation_kwargs,
            )
        row = out[0, len(prompt) :].tolist()
        completions.append(row[: row.index(eos) + 1] if eos in row else row)
    return completions


def greedy(engine, prompts, max_new_tokens, eos, **generation_kwargs):
    return engine.generate(prompts, max_new_tokens, 0.0, 1.0, 0, [eos], [0] * len(prompts), **generation_kwargs)


def hf_logprobs(model, rows):
    """Per row, log_softmax of transformers' logits at each position (the distribution of the next token)."""
    with torch.no_grad():
        return [torch.log_softmax(model(torch.tensor([row])).logits[0].float(), -1) for row in rows]


def max_logprob_diff(engine, model, rows):
    """Largest difference between the engine's and transformers' log-prob of each actual next token of `rows`."""
    worst = 0.0
    for row, ours, ref in zip(rows, engine.prompt_logprobs(rows, 0), hf_logprobs(model, rows)):
        assert len(ours) == len(row) - 1
        for i, position in enumerate(ours):
            worst = max(worst, abs(position[row[i + 1]] - ref[i, row[i + 1]].item()))
    return worst


@pytest.mark.vllm
def test_greedy_completions_equal_transformers_generate(demo, engine):
    model, tokenizer, prompts = demo
    eos = tokenizer.eos_token_id
    tokens, truncated = greedy(engine, prompts, 40, eos)
    assert tokens == hf_greedy(model, prompts, 40, eos)
    # The demo teacher ends its answers: each completion ends with eos, and none was cut.
    assert all(row[-1] == eos for row in tokens) and truncated == [False] * len(prompts)
    # Cut at max_new_tokens: the same prefix, flagged truncated.
    short, cut = greedy(engine, prompts, 2, eos)
    assert short == [row[:2] for row in tokens]
    assert cut == [len(row) > 2 for row in tokens]


@pytest.mark.vllm
def test_generation_kwargs_change_vllm_as_they_change_transformers(demo, engine):
    model, tokenizer, prompts = demo
    eos = tokenizer.eos_token_id
    for kwargs in ({"repetition_penalty": 4.0}, {"min_new_tokens": 12}):
        tokens, _ = greedy(engine, prompts, 24, eos, generation_kwargs=kwargs)
        assert tokens == hf_greedy(model, prompts, 24, eos, **kwargs), kwargs
        assert tokens != greedy(engine, prompts, 24, eos)[0], f"{kwargs} changed nothing: not a test"


@pytest.mark.vllm
def test_engine_start_keeps_the_global_random_state(engine):
    assert engine.rng_kept


@pytest.mark.vllm
def test_load_weights_syncs_every_layer(demo, engine):
    model, tokenizer, prompts = demo
    eos = tokenizer.eos_token_id
    student = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    batch = torch.tensor([prompts[0] + prompts[1]])
    for _ in range(3):
        student(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    student.eval()
    # Every weight matrix moved (Adam's first steps move each weight with a gradient by about lr).
    assert all(not torch.equal(a, b) for a, b in zip(student.parameters(), model.parameters()))
    expected = hf_greedy(student, prompts, 40, eos)
    rows = [p + c for p, c in zip(prompts, expected)]
    # Before the sync the engine still answers as the old weights: the comparison below can fail.
    assert greedy(engine, prompts, 40, eos)[0] != expected
    assert max_logprob_diff(engine, student, rows) > 1e-2
    try:
        seconds = engine.load_weights(student.state_dict().items())
        assert greedy(engine, prompts, 40, eos)[0] == expected
        # A layer the sync missed would leave its old weights, and every log-prob would move by far more.
        assert max_logprob_diff(engine, student, rows) < 1e-4
        assert seconds < 5
    finally:
        # Back to the teacher's weights for the other tests of the module: a second sync, checked the same way.
        engine.load_weights(model.state_dict().items())
    assert greedy(engine, prompts, 40, eos)[0] == hf_greedy(model, prompts, 40, eos)
    assert max_logprob_diff(engine, model, rows) < 1e-4


@pytest.mark.vllm
def test_seeds_are_per_row(demo, engine):
    _, tokenizer, prompts = demo
    eos = tokenizer.eos_token_id

    def sample(rows, seeds):
        return engine.generate(rows, 24, 1.0, 1.0, 0, [eos], seeds)[0]

    first = sample(prompts, list(range(8)))
    assert sample(prompts, list(range(8))) == first
    other = sample(prompts, list(range(100, 108)))
    assert sum(a != b for a, b in zip(first, other)) >= 4
    # A row's completion depends on its own seed, not on its batch.
    assert sample(prompts[3:4], [3]) == first[3:4]
    assert sample([prompts[3], prompts[0]], [3, 0]) == [first[3], first[0]]
    with pytest.raises(ValueError, match="one seed per prompt"):
        sample(prompts, [0])


def sampled_ranks(engine, model, prompts, eos, top_k, seeds):
    """The rank (0 = most likely, by transformers' logits) of every token the engine sampled at temperature 1.5."""
    tokens, _ = engine.generate(prompts, 24, 1.5, 1.0, top_k, [eos], seeds)
    ranks = []
    for prompt, completion, logprobs in zip(
        prompts, tokens, hf_logprobs(model, [p + c for p, c in zip(prompts, tokens)])
    ):
        for j, token in enumerate(completion):
            position = logprobs[len(prompt) - 1 + j]
            ranks.append(int((position > position[token]).sum()))
    return ranks


@pytest.mark.vllm
def test_top_k_zero_means_no_top_k(demo, engine):
    model, tokenizer, prompts = demo
    eos = tokenizer.eos_token_id
    seeds = list(range(8))
    # top_k=1 is greedy, whatever the seed.
    assert engine.generate(prompts, 24, 1.0, 1.0, 1, [eos], seeds)[0] == greedy(engine, prompts, 24, eos)[0]
    assert max(sampled_ranks(engine, model, prompts * 4, eos, 3, list(range(32)))) < 3
    # With 0, tokens outside any small top-k are drawn.
    assert max(sampled_ranks(engine, model, prompts * 4, eos, 0, list(range(32)))) >= 3
