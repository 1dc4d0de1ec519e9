"""Fixtures of the tiny models and data built in testing_utils.py."""

import json

import pytest
import torch
from testing_utils import refuse_weights, tiny_llama, variable_length_dataset, word_tokenizer


@pytest.fixture
def student():
    return tiny_llama(seed=1, hidden=32, layers=1)


@pytest.fixture
def teacher():
    return tiny_llama(seed=2, hidden=48, layers=2)


@pytest.fixture
def dataset():
    return variable_length_dataset()


@pytest.fixture
def tokenizer():
    return word_tokenizer()


@pytest.fixture
def workspace(tmp_path):
    """A teacher folder, a student config folder, a tokenizer and a chat dataset, all local."""
    return make_workspace(tmp_path)


def make_workspace(tmp_path):
    """`(tmp_path, recipe path)`: the `workspace` fixture's files, written into `tmp_path`."""
    tokenizer = word_tokenizer()
    teacher = tiny_llama(seed=2, hidden=48, layers=2)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    tiny_llama(seed=1, hidden=32, layers=1).config.save_pretrained(tmp_path / "student_config")
    data = tmp_path / "data"
    data.mkdir()
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 32), ("eval", 8)):
        with open(data / f"{split}.jsonl", "w") as f:
            for i in range(n):
                words = [f"w{j}" for j in torch.randint(0, 50, (6,), generator=gen).tolist()]
                messages = [
                    {"role": "user", "content": " ".join(words[:3])},
                    {"role": "assistant", "content": " ".join(words[3:])},
                ]
                f.write(json.dumps({"id": f"{split}-{i}", "messages": messages}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tmp_path / 'student_config'}\n"
        "student_init: from_config\n"
        f"teacher_model_name_or_path: {tmp_path / 'teacher'}\n"
        f"dataset_name: {data}\n"
        "dataset_eval_split: eval\n"
        "alpha: 0.5\ntemperature: 2.0\nloss_type: jsd\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "per_device_train_batch_size: 4\nmax_steps: 4\nlogging_steps: 2\nlearning_rate: 1.0e-3\n"
        "use_cpu: true\nreport_to: []\nsave_strategy: 'no'\ndisable_tqdm: true\n"
    )
    return tmp_path, str(recipe)


@pytest.fixture
def no_weights(monkeypatch):
    """`refuse_weights` for the whole test."""
    refuse_weights(monkeypatch)
