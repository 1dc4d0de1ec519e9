"""Tiny models, data and a tokenizer built from configs, so every test (and every script the tests launch) runs
offline in seconds."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from hf_distill.cli import main
from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import build_trainer
from hf_distill.run.atomic_write import remove_path
from hf_distill.run.model_card import render_model_card
from hf_distill.run.run_arguments import RUN_ARGUMENTS

# The tests folder, the repository, and the scripts the tests launch: tests in subfolders read these, not __file__.
TESTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS)
SCRIPTS = os.path.join(TESTS, "scripts")
VOCAB = 64


def tiny_sizes(hidden: int = 32, layers: int = 2, vocab: int = VOCAB) -> dict:
    """The config fields every tiny test model shares, whatever its architecture."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_llama(seed: int, hidden: int = 32, layers: int = 2, vocab: int = VOCAB) -> LlamaForCausalLM:
    config = LlamaConfig(**tiny_sizes(hidden, layers, vocab))
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def variable_length_dataset(n: int = 24, seed: int = 0, vocab: int = VOCAB) -> Dataset:
    """Sequences of different lengths with a masked prompt of different lengths, so micro-batches of the same step
    hold different numbers of target tokens."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 6 + (i * 7) % 17
        prompt = 1 + i % 4
        ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return Dataset.from_list(rows)


def pad_collator(features):
    """Right-pad to the longest sequence of the batch; padded positions are masked out of attention and loss."""
    width = max(len(f["input_ids"]) for f in features)

    def pad(seq, value):
        return seq + [value] * (width - len(seq))

    return {
        "input_ids": torch.tensor([pad(f["input_ids"], 0) for f in features]),
        "attention_mask": torch.tensor([pad([1] * len(f["input_ids"]), 0) for f in features]),
        "labels": torch.tensor([pad(f["labels"], -100) for f in features]),
    }


CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<asst> {% generation %}{{ m['content'] }} <eos>"
    "{% endgeneration %} {% else %}<user> {{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<asst> {% endif %}"
)
WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "<user>", "<asst>"] + [f"w{i}" for i in range(VOCAB - 6)]


def word_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A whitespace word-level tokenizer over `w0 w1 ...`, one id per word, built in memory."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def replace_teacher(tmp_path, recipe, lines: str, name: str) -> str:
    """The `workspace` recipe with its teacher line replaced by `lines`, written to `tmp_path / name`."""
    text = open(recipe).read().replace(f"teacher_model_name_or_path: {tmp_path / 'teacher'}\n", lines)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def ensemble_recipe(tmp_path, recipe, mode="mean_probs"):
    """The `workspace` recipe with a second, different teacher (saved to `tmp_path / "teacher2"`), weighted 3 : 1."""
    second = tmp_path / "teacher2"
    tiny_llama(seed=3, hidden=32, layers=1).save_pretrained(second)
    word_tokenizer().save_pretrained(second)
    lines = (
        f"teacher_model_name_or_path: [{tmp_path / 'teacher'}, {second}]\nteacher_weights: [3, 1]\n"
        f"teacher_ensemble: {mode}\n"
    )
    return replace_teacher(tmp_path, recipe, lines, f"ensemble_{mode}.yaml"), second


OTHER_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}"
    " [ANSWER] {{ m['content'] }}{{ eos_token }}{% else %}[ASK] {{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} [ANSWER] {% endif %}"
)


def other_demo_tokenizer(vocab_size: int = 400):
    """A second byte-level BPE tokenizer of the demo data (recipes/demo/data), smaller than the demo's, with other
    special tokens and another chat template: a teacher tokenizer for cross-tokenizer tests, built in memory."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = os.path.join(REPO_ROOT, "recipes", "demo", "data", "train.jsonl")
    with open(root, encoding="utf-8") as f:
        texts = [m["content"] for line in list(f)[:1000] for m in json.loads(line)["messages"]]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["</s>", "<s>", "[ASK]", "[ANSWER]"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        additional_special_tokens=specials[2:],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = OTHER_CHAT_TEMPLATE
    return tokenizer


DIGIT_WORDS = ["<pad>", "<s>", "</s>", "<unk>", "[Q]", "[A]", "w"] + [str(d) for d in range(10)]
DIGIT_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}[A] {{ m['content'] }} </s> "
    "{% else %}[Q] {{ m['content'] }} {% endif %}{% endfor %}{% if add_generation_prompt %}[A] {% endif %}"
)


def digit_tokenizer():
    """A word-level tokenizer that splits `w12` into `w`, `1`, `2`, with other special tokens and another chat
    template than `word_tokenizer`: a teacher tokenizer of 17 tokens for cross-tokenizer tests."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(DIGIT_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = DIGIT_CHAT_TEMPLATE
    return tokenizer


def cross_tokenizer_recipe(tmp_path, recipe, mode="uld", extra=""):
    """The `workspace` recipe with a teacher of `digit_tokenizer`'s vocabulary (saved to `tmp_path / "teacher_b"`
    with its tokenizer) and `cross_tokenizer: mode`."""
    teacher = tmp_path / "teacher_b"
    tiny_llama(seed=4, hidden=48, layers=1, vocab=len(DIGIT_WORDS)).save_pretrained(teacher)
    digit_tokenizer().save_pretrained(teacher)
    lines = (
        f"teacher_model_name_or_path: {teacher}\ntokenizer_name_or_path: {tmp_path / 'teacher'}\n"
        f"cross_tokenizer: {mode}\n{extra}"
    )
    path = replace_teacher(tmp_path, recipe, lines, f"cross_{mode}.yaml")
    if mode == "uld":  # ULD is its own distance: the workspace's loss_type would be refused
        with open(path) as f:
            text = f.read().replace("loss_type: jsd\n", "")
        with open(path, "w") as f:
            f.write(text)
    return path


def refuse_weights(monkeypatch) -> None:
    """Fail the test if any model weights are loaded from now on: bad input must be refused first (docs/errors.md)."""

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the error was raised")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", refuse)


# Helpers shared by tests in several folders.


def error_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-distill: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_split(tmp_path, rows):
    data = tmp_path / "bad_data"
    data.mkdir(exist_ok=True)
    with open(data / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(data)


def build(recipe, cache_dir, top_k=8, shard_size=10, *overrides):
    args = ["cache-teacher", recipe, "--output_dir", str(cache_dir), "--top_k", str(top_k)]
    main([*args, "--shard_size", str(shard_size), *overrides])


def _trainer(tmp_path, recipe, **overrides):
    overrides = {"logging_steps": 1, **overrides}
    model_args, data_args, config = parse_recipe(recipe, [f"--{k}={v}" for k, v in overrides.items()])
    return build_trainer(model_args, data_args, config)


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def run_with_a_card(workspace):
    """The workspace's student saved to the recipe's output_dir with a model card, and eval data with categories."""
    tmp_path, recipe = workspace
    out = tmp_path / "out"
    tiny_llama(seed=1, hidden=32, layers=1).save_pretrained(out)
    card = render_model_card(
        model_name="out", student_base=None, teacher="teacher", dataset="data", alpha=0.5, loss_type="jsd",
        temperature=2.0, steps=4, eval_metrics={},
    )  # fmt: skip
    (out / "README.md").write_text(card)
    eval_file = tmp_path / "data" / "eval.jsonl"
    rows = [json.loads(line) for line in eval_file.read_text().splitlines()]
    eval_file.write_text("".join(json.dumps({**r, "category": "ab"[i % 2]}) + "\n" for i, r in enumerate(rows)))
    return out, recipe


def interrupted(out, after_step: int | None = None):
    """`out`, a finished `hf-distill train` run's folder, as a kill leaves it: not marked finished (a kill between
    the card and the mark), and with `after_step` also without the checkpoints past that step, the final weights and
    the card (a kill after that step's checkpoint). A rerun of the same command then resumes."""
    if after_step is not None:
        for name in os.listdir(out):
            step = name.removeprefix("checkpoint-")
            later = name.startswith("checkpoint-") and step.isdigit() and int(step) > after_step
            if later or name in ("model.safetensors", "README.md"):
                remove_path(os.path.join(out, name))
    path = os.path.join(out, RUN_ARGUMENTS)
    with open(path) as f:
        recorded = json.load(f)
    with open(path, "w") as f:
        json.dump({**recorded, "finished": False}, f)
    return out
