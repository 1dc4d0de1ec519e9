"""`hf-distill evaluate`: answer metrics against hand-computed values, teacher-forced metrics against an explicit
softmax, batched greedy decoding against one prompt at a time, and the command end to end with its model card."""

import json
import math
import os

import pytest
import torch
from huggingface_hub import ModelCard
from testing_utils import (
    REPO_ROOT,
    ensemble_recipe,
    refuse_weights,
    run_with_a_card,
    tiny_llama,
    variable_length_dataset,
    word_tokenizer,
)

from hf_distill.cli import main
from hf_distill.commands.evaluate import load_metrics, teacher_forced_sums
from hf_distill.data.datasets import split_prompt
from hf_distill.generation.greedy import greedy_completions
from hf_distill.metrics.answers import exact_match, normalize_answer, token_f1
from hf_distill.run.model_card import render_model_card

ROOT = REPO_ROOT

PREDICTIONS = ["In Vostal.", "brinna is a baker", "3", "", "Sure: 1, 2, 3."]
REFERENCES = ["in  vostal", "Brinna is a potter.", "3.", "", "1, 2, 3."]
# By hand: matches are 1, 0, 1, 1 (two empty answers), 0. F1: 1; 3 common words of 4 and 4 -> 3/4; 1; 1;
# "sure 1 2 3" against "1 2 3": precision 3/4, recall 1 -> 6/7.
EXACT_MATCH = 3 / 5
TOKEN_F1 = (1 + 3 / 4 + 1 + 1 + 6 / 7) / 5


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("  In\tVostal. ", "in vostal"),
        ("3.", "3"),
        ("Done?!", "done"),
        ("a . . ", "a"),  # final punctuation with spaces between
        ("3, 4", "3, 4"),  # inner punctuation stays
        ("e.g. x", "e.g. x"),
        ("...", ""),
        ("", ""),
        ("Line\none", "line one"),
    ],
)
def test_normalization_corner_cases(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_token_f1_equal_hand_computed_values():
    assert exact_match(PREDICTIONS, REFERENCES) == pytest.approx(EXACT_MATCH)
    assert token_f1(PREDICTIONS, REFERENCES) == pytest.approx(TOKEN_F1)
    assert exact_match(["3, 4"], ["3 4"]) == 0.0 and token_f1(["3, 4"], ["3 4"]) == 1.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


def test_builtin_metrics_load_offline_through_evaluate_combine(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scores = load_metrics().compute(predictions=PREDICTIONS, references=REFERENCES)
    assert scores == pytest.approx({"exact_match": EXACT_MATCH, "token_f1": TOKEN_F1})


def test_a_metric_that_cannot_load_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        load_metrics(["no_such_metric_xyz"])
    message = str(err.value)
    assert "--metric 'no_such_metric_xyz'" in message and "network" in message and "\n" not in message


def test_prompt_is_what_precedes_the_last_run_of_targets():
    ids = [1, 4, 10, 11, 5, 12, 2, 4, 13, 5, 14, 15, 2]
    labels = [-100] * 5 + [12, 2] + [-100] * 3 + [14, 15, 2]
    assert split_prompt(ids, labels) == (ids[:10], [14, 15, 2])


def _explicit_terms(student, teacher, example):
    """Per-example sums of CE, KL both ways and agreement from softmax written out, one unpadded example."""
    ids = torch.tensor([example["input_ids"]])
    targets = torch.tensor(example["labels"][1:])
    keep = targets != -100
    with torch.no_grad():
        s, t = student(ids).logits[0, :-1][keep].double(), teacher(ids).logits[0, :-1][keep].double()
    p_s = torch.exp(s) / torch.exp(s).sum(-1, keepdim=True)
    p_t = torch.exp(t) / torch.exp(t).sum(-1, keepdim=True)
    rows = torch.arange(len(p_s))
    return {
        "student_ce": -torch.log(p_s[rows, targets[keep]]).sum(),
        "teacher_ce": -torch.log(p_t[rows, targets[keep]]).sum(),
        "forward_kl": (p_t * (torch.log(p_t) - torch.log(p_s))).sum(),
        "reverse_kl": (p_s * (torch.log(p_s) - torch.log(p_t))).sum(),
        "agree": (p_s.argmax(-1) == p_t.argmax(-1)).double().sum(),
        "tokens": torch.tensor(float(keep.sum())),
    }


def test_teacher_forced_metrics_equal_an_explicit_softmax():
    student, teacher = tiny_llama(seed=1, hidden=32, layers=1), tiny_llama(seed=2, hidden=48, layers=2)
    dataset = variable_length_dataset(n=10)
    # Batches of 4 pad the shorter examples: padding must change nothing.
    sums = teacher_forced_sums(student, teacher, dataset, word_tokenizer(), batch_size=4)
    for i, example in enumerate(dataset):
        expected = _explicit_terms(student, teacher, example)
        for name, value in expected.items():
            assert sums[name][i].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), (i, name)
    assert sums["forward_kl"].sum() > 0 and sums["reverse_kl"].sum() > 0
    # A process of a launch with fewer examples than processes gets none.
    empty = teacher_forced_sums(student, teacher, dataset.select([]), word_tokenizer(), batch_size=4)
    assert set(empty) == set(sums) and all(v.shape == (0,) for v in empty.values())


def test_batched_greedy_completions_equal_one_prompt_at_a_time():
    model, tokenizer = tiny_llama(seed=3, hidden=32, layers=2), word_tokenizer()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(6, 64, (n,), generator=gen).tolist() for n in (3, 7, 5, 9, 4)]
    alone = [greedy_completions(model, tokenizer, [p], 6)[0] for p in prompts]
    assert greedy_completions(model, tokenizer, prompts, 6) == alone
    assert any(alone)


def test_the_demo_data_has_a_category_per_conversation():
    with open(os.path.join(ROOT, "recipes", "demo", "data", "eval.jsonl")) as f:
        categories = {json.loads(line)["category"] for line in f}
    assert categories == {"towns", "jobs", "sums", "counts", "reversals", "stories"}


def test_evaluate_command_writes_results_and_the_model_card(workspace, capsys):
    out, recipe = run_with_a_card(workspace)
    output = workspace[0] / "results.json"
    main(["evaluate", recipe, "--output", str(output), "--max_new_tokens", "4", "--per_device_eval_batch_size", "3"])
    results = json.loads(output.read_text())
    assert json.loads((out / "evaluation.json").read_text()) == results
    assert results["examples"] == 8 and set(results["categories"]) == {"a", "b"}
    assert sum(group["examples"] for group in results["categories"].values()) == 8
    for role in ("student", "teacher"):
        scores = results[role]
        assert 0 <= scores["exact_match"] <= scores["token_f1"] <= 1  # an exact match has an F1 of 1
        assert scores["perplexity"] == pytest.approx(math.exp(scores["ce"]))
        assert scores["tokens_per_second"] > 0 and 0 < scores["generated_tokens"] <= 8 * 4
    pair = results["student_to_teacher"]
    assert pair["forward_kl"] > 0 and pair["reverse_kl"] > 0 and 0 <= pair["top1_agreement"] <= 1
    assert pair["parameter_ratio"] == pytest.approx(
        results["student"]["parameters"] / results["teacher"]["parameters"]
    )
    assert "top1_agreement" in capsys.readouterr().out

    card = ModelCard.load(out / "README.md")
    (result, *_) = card.data.eval_results
    assert result.metric_type == "exact_match" and result.metric_value == round(results["student"]["exact_match"], 4)
    assert result.dataset_split == "eval" and card.data.model_name == "out"
    assert "| exact_match |" in card.text and "| ab |" not in card.text and "| a | 4 |" in card.text
    # A second run replaces the section instead of adding one.
    main(["evaluate", recipe, "--max_new_tokens", "4"])
    assert (out / "README.md").read_text().count("## Evaluation") == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--metric", "no_such_metric_xyz"],
            "evaluate metric cannot be loaded (--metric 'no_such_metric_xyz'): ",
        ),
        (
            ["--max_new_tokens", "0"],
            "invalid --max_new_tokens (--max_new_tokens=0): must be >= 1; pass --max_new_tokens 1 or more",
        ),
        (["--model", "/nonexistent/student"], "/nonexistent/student"),
        (["--split", "test"], "no such split (--split='test'): "),
    ],
)
def test_evaluate_bad_input_is_one_line(workspace, capsys, monkeypatch, flags, message):
    _, recipe = workspace
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refuse_weights(monkeypatch)
    with pytest.raises(SystemExit) as exit_code:
        main(["evaluate", recipe, *flags])
    assert exit_code.value.code == 2
    # Above the error, stderr holds only the progress bars of reading the data.
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("hf-distill: error: ") and message in last, last


def test_evaluate_needs_one_teacher(workspace, capsys, monkeypatch):
    tmp_path, recipe = workspace
    refuse_weights(monkeypatch)
    text = open(recipe).read()
    no_teacher = tmp_path / "no_teacher.yaml"
    no_teacher.write_text(
        text.replace(f"teacher_model_name_or_path: {tmp_path / 'teacher'}\n", "").replace("alpha: 0.5", "alpha: 1.0")
    )
    ensemble, _ = ensemble_recipe(tmp_path, recipe)
    for path, message in (
        (
            no_teacher,
            "no teacher to compare with (teacher_model_name_or_path=None, alpha=1.0): the recipe names no teacher; "
            "pass --teacher DIR_OR_ID",
        ),
        (ensemble, "evaluate compares the student with one teacher; pass one member with --teacher"),
    ):
        with pytest.raises(SystemExit):
            main(["evaluate", str(path)])
        assert message in capsys.readouterr().err


def test_a_card_rendered_with_an_evaluation_holds_its_table_and_model_index():
    evaluation = {
        "dataset": "data", "split": "eval", "examples": 2, "target_tokens": 9, "max_new_tokens": 4,
        "teacher_path": "teacher",
        "student": {"exact_match": 0.5, "token_f1": 0.75, "ce": 0.25, "perplexity": math.exp(0.25),
                    "parameters": 10, "tokens_per_second": 300.0},
        "teacher": {"exact_match": 1.0, "token_f1": 1.0, "ce": 0.125, "perplexity": math.exp(0.125),
                    "parameters": 40, "tokens_per_second": 100.0},
        "student_to_teacher": {"forward_kl": 0.1, "reverse_kl": 0.2, "top1_agreement": 0.9, "parameter_ratio": 0.25,
                               "speedup": 3.0},
    }  # fmt: skip
    card = ModelCard(
        render_model_card(
            model_name="m", student_base=None, teacher="teacher", dataset="data", alpha=0.5, loss_type="jsd",
            temperature=2.0, steps=4, eval_metrics={}, evaluation=evaluation,
        )
    )  # fmt: skip
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"exact_match": 0.5, "token_f1": 0.75, "perplexity": round(math.exp(0.25), 4)}
    assert "| exact_match | 0.5000 | 1.0000 |" in card.text and "| greedy tokens/s | 300 | 100 |" in card.text


def test_evaluate_refuses_data_without_prompts(workspace, capsys, monkeypatch):
    tmp_path, recipe = workspace
    refuse_weights(monkeypatch)
    text_data = tmp_path / "text_data"
    text_data.mkdir()
    (text_data / "eval.jsonl").write_text('{"text": "w1 w2 w3"}\n')
    with pytest.raises(SystemExit):
        main(["evaluate", recipe, "--model", str(tmp_path / "teacher"), "--dataset_name", str(text_data)])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "hf-distill: error: examples without a prompt (--split='eval'): 1 of 1 examples have no prompt (every token "
        "is a target, as in dataset_format 'text'); evaluate prompt + completion or messages data"
    )
