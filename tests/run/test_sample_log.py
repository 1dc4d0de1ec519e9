"""samples.csv names each example: by its id, by its index in the (sequential) eval set, or training stops."""

import csv

import pytest
from test_trainer import make_args
from testing_utils import pad_collator, tiny_llama, variable_length_dataset, word_tokenizer

from hf_distill import DistillTrainer
from hf_distill.data.datasets import DistillDataCollator


def samples(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sample_trainer(output_dir, collator=pad_collator, train_dataset=None, eval_dataset=None, **args):
    """A tiny student and teacher; `args` go to `make_args`."""
    return DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(output_dir, **args),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
    )


def target_tokens(dataset):
    return [sum(label != -100 for label in row["labels"][1:]) for row in dataset]


def test_evaluation_rows_without_ids_are_named_by_dataset_index(tmp_path):
    """7 examples in batches of 3 (the last one short): row i describes example i, whatever batch it was in."""
    eval_dataset = variable_length_dataset(7, seed=4)
    trainer = sample_trainer(tmp_path, per_device_eval_batch_size=3, eval_dataset=eval_dataset)
    trainer.evaluate()
    trainer.evaluate()  # a second evaluation numbers its examples from 0 again
    rows = samples(tmp_path / "samples.csv")
    assert [r["id"] for r in rows] == [str(i) for i in range(7)] * 2
    # Examples differ in their number of target tokens, so this pins each row to its example.
    assert [int(r["tokens"]) for r in rows] == target_tokens(eval_dataset) * 2


def test_training_rows_need_ids(tmp_path):
    args = dict(max_steps=2, per_device_train_batch_size=4, track_samples=["train"])
    trainer = sample_trainer(tmp_path / "no_ids", **args, train_dataset=variable_length_dataset())
    # Shuffled batches without ids: a running count would name the wrong examples.
    with pytest.raises(ValueError, match="training batches carry no 'id' field.*DistillDataCollator"):
        trainer.train()

    dataset = variable_length_dataset()
    named = dataset.map(lambda _, i: {"id": f"ex-{i}"}, with_indices=True)
    trainer = sample_trainer(tmp_path / "ids", DistillDataCollator(word_tokenizer()), **args, train_dataset=named)
    trainer.train()
    rows = samples(tmp_path / "ids" / "samples.csv")
    assert [r["step"] for r in rows] == ["1"] * 4 + ["2"] * 4
    assert len({r["id"] for r in rows}) == 8
    tokens = target_tokens(dataset)
    assert all(int(r["tokens"]) == tokens[int(r["id"].removeprefix("ex-"))] for r in rows)


def test_evaluation_rows_need_ids_when_grouped_by_length(tmp_path):
    """Trainer's eval sampler groups by length too under group_by_length: the dataset index no longer names a row."""
    args = dict(per_device_eval_batch_size=3, train_sampling_strategy="group_by_length")
    eval_dataset = variable_length_dataset(7, seed=4)
    trainer = sample_trainer(tmp_path / "no_ids", **args, eval_dataset=eval_dataset)
    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length' reorders them"):
        trainer.evaluate()

    named = eval_dataset.map(lambda _, i: {"id": f"ex-{i}"}, with_indices=True)
    trainer = sample_trainer(tmp_path / "ids", DistillDataCollator(word_tokenizer()), **args, eval_dataset=named)
    trainer.evaluate()
    rows = samples(tmp_path / "ids" / "samples.csv")
    assert [r["id"] for r in rows] != [f"ex-{i}" for i in range(7)]  # the sampler did reorder them
    assert sorted(r["id"] for r in rows) == sorted(f"ex-{i}" for i in range(7))
    tokens = target_tokens(eval_dataset)
    assert all(int(r["tokens"]) == tokens[int(r["id"].removeprefix("ex-"))] for r in rows)
