"""`eval_generate`: each evaluation also answers every eval prompt greedily and reports exact match and token F1,
equal to `model.generate` on each prompt alone scored by `hf_distill.metrics.answers`."""

import csv

import pytest
import torch
from datasets import Dataset
from testing_utils import tiny_llama, word_tokenizer

from hf_distill import DistillConfig, DistillTrainer
from hf_distill.data.datasets import DistillDataCollator
from hf_distill.metrics.answers import exact_match, token_f1


def prompt_completion_rows(n=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        prompt = torch.randint(6, 64, (2 + i % 3,), generator=gen).tolist()
        completion = torch.randint(6, 64, (1 + i % 2,), generator=gen).tolist() + [2]
        rows.append({"id": str(i), "input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion})
    return Dataset.from_list(rows)


def test_eval_generate_reports_exact_match_and_f1(tmp_path):
    student = tiny_llama(seed=1, hidden=32, layers=1)
    eval_rows = prompt_completion_rows()
    tokenizer = word_tokenizer()
    # Make some references the student's own greedy answers, so that exact match is neither 0 nor 1.
    answers = []
    with torch.no_grad():
        for row in eval_rows:
            prompt = row["input_ids"][: row["labels"].count(-100)]
            out = student.generate(
                torch.tensor([prompt]), max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=2
            )
            answers.append(out[0, len(prompt) :].tolist())
    rows = list(eval_rows)
    for row, answer in list(zip(rows, answers))[:4]:
        prompt_length = row["labels"].count(-100)
        row["input_ids"] = row["input_ids"][:prompt_length] + answer
        row["labels"] = [-100] * prompt_length + answer
    eval_dataset = Dataset.from_list(rows)
    args = DistillConfig(
        output_dir=str(tmp_path), use_cpu=True, alpha=1.0, eval_generate=True, eval_max_new_tokens=3,
        per_device_eval_batch_size=4, report_to=[], disable_tqdm=True,
    )  # fmt: skip
    trainer = DistillTrainer(
        model=student, args=args, eval_dataset=eval_dataset, data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
    )  # fmt: skip
    metrics = trainer.evaluate()

    predictions, references = [], []
    with torch.no_grad():
        for row in rows:
            prompt_length = row["labels"].count(-100)
            out = student.generate(
                torch.tensor([row["input_ids"][:prompt_length]]), max_new_tokens=3, do_sample=False, pad_token_id=0,
                eos_token_id=2,
            )  # fmt: skip
            answer = out[0, prompt_length:].tolist()
            answer = answer[: answer.index(2) + 1] if 2 in answer else answer
            predictions.append(tokenizer.decode(answer, skip_special_tokens=True).strip())
            references.append(tokenizer.decode(row["input_ids"][prompt_length:], skip_special_tokens=True).strip())
    expected = exact_match(predictions, references)
    assert 0 < expected < 1
    assert metrics["eval_exact_match"] == pytest.approx(expected)
    assert metrics["eval_token_f1"] == pytest.approx(token_f1(predictions, references))
    with open(tmp_path / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r["split"] == "eval"]
    assert float(row["eval_exact_match"]) == pytest.approx(expected)


def test_eval_generate_needs_a_tokenizer(tmp_path):
    args = DistillConfig(output_dir=str(tmp_path), use_cpu=True, alpha=1.0, eval_generate=True, report_to=[])
    with pytest.raises(
        ValueError, match="eval_generate=True generates answers: pass the tokenizer as processing_class"
    ):
        DistillTrainer(model=tiny_llama(seed=1), args=args)
    with pytest.raises(ValueError, match=r"^invalid eval_max_new_tokens \(eval_max_new_tokens=0\): must be >= 1; "):
        DistillConfig(output_dir=str(tmp_path), use_cpu=True, eval_max_new_tokens=0)
