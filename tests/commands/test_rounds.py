"""Multi-round recipes: parsing, checking, born-again chaining of students and teachers, resuming a crashed run."""

import csv
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import hf_distill.commands.rounds
import hf_distill.commands.train
import hf_distill.models.loading
from hf_distill.cli import main
from hf_distill.commands.recipe import RecipeError, parse_recipe
from hf_distill.commands.rounds import ROUND_MARKER, parse_rounds, run_rounds

BORN_AGAIN = """
rounds:
  - max_steps: 2
  - teacher_model_name_or_path: previous_round
    max_steps: 4
    save_strategy: steps
    save_steps: 2
    temperature: 1.0
"""


def rounds_recipe(workspace, text=BORN_AGAIN):
    tmp_path, recipe = workspace
    path = tmp_path / "rounds.yaml"
    path.write_text(open(recipe).read() + text)
    return str(path), tmp_path / "out"


@pytest.fixture
def loads(monkeypatch):
    """(field, path, model) of every model the pipeline loads from a folder."""
    calls = []
    load = hf_distill.models.loading.load_causal_lm

    def recording_load(name, field_name, **kwargs):
        model = load(name, field_name, **kwargs)
        calls.append((field_name, name, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(hf_distill.models.loading, "load_causal_lm", recording_load)
    return calls


def test_parse_chains_the_rounds(workspace):
    recipe, out = rounds_recipe(workspace)
    first, second = parse_rounds(recipe, ["--output_dir", str(out / "moved"), "--learning_rate", "0.5"])
    assert first.config.output_dir == str(out / "moved" / "round-1")
    assert second.config.output_dir == str(out / "moved" / "round-2")
    assert (first.model_args.student_init, first.config.teacher_model_name_or_path) == (
        "from_config",
        str(workspace[0] / "teacher"),
    )
    assert second.model_args.model_name_or_path == first.config.output_dir
    assert second.model_args.student_init == "pretrained"
    assert second.config.teacher_model_name_or_path == first.config.output_dir
    assert (first.config.max_steps, second.config.max_steps) == (2, 4)
    assert (first.config.temperature, second.config.temperature) == (2.0, 1.0)  # the shared value, then the round's
    assert first.config.learning_rate == second.config.learning_rate == 0.5  # the command line applies to all


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rounds:\n  - {max_steps: 2}\n  - {temperture: 1}\n",
            r"unknown key \('temperture' in round 2 of .*temperature",
        ),
        (
            "rounds:\n  - {output_dir: x}\n",
            r"^key set by the chain of rounds \('output_dir' in round 1 of .*; set it once",
        ),
        ("rounds:\n  - {}\n  - {model_name_or_path: x}\n", r"'model_name_or_path' in round 2 .*previous round's"),
        ("rounds:\n  - {teacher_model_name_or_path: previous_round}\n", r"^no previous round \(.* in round 1 of "),
        ("rounds:\n  - {}\n  - {alpha: 3}\n", "round 2 of .*: alpha must be in"),
        (
            "rounds:\n  - {}\n  - {use_peft: true}\n",
            r"^LoRA in a multi-round recipe \(use_peft: true in round 2 of .*\): a multi-round recipe chains full",
        ),
        ("rounds: []\n", r"^invalid 'rounds' \(.*\): it must be a non-empty list of mappings"),
        ("rounds:\n  - 3\n", r"^invalid 'rounds' \(.*\): it must be a non-empty list of mappings; write one"),
    ],
)
def test_bad_rounds_name_the_key_and_the_round(workspace, text, message):
    recipe, _ = rounds_recipe(workspace, text)
    with pytest.raises(RecipeError, match=message) as info:
        parse_rounds(recipe)
    assert "\n" not in str(info.value)


def test_single_run_parser_refuses_rounds(workspace):
    recipe, _ = rounds_recipe(workspace)
    with pytest.raises(RecipeError, match="multi-round recipe"):
        parse_recipe(recipe)


def test_check_validates_every_round(workspace, capsys):
    recipe, _ = rounds_recipe(workspace)
    main(["check", recipe])  # round 2's student and teacher do not exist yet: round 1 will write them
    assert f"{recipe}: ok" in capsys.readouterr().out
    bad, _ = rounds_recipe(workspace, "rounds:\n  - {}\n  - {dataset_name: /no/such/data}\n")
    with pytest.raises(SystemExit):
        main(["check", bad])
    assert capsys.readouterr().err == (
        "hf-distill: error: round 2: dataset not found (dataset_name='/no/such/data'): no such file or folder; fix "
        "the path\n"
    )


def test_born_again_rounds(workspace, loads):
    recipe, out = rounds_recipe(workspace)
    main(["train", recipe])

    for k, steps in ((1, 2), (2, 4)):
        marker = json.loads((out / f"round-{k}" / ROUND_MARKER).read_text())
        assert marker["round"] == k and "eval_loss" in marker["metrics"]
        state = json.loads((out / f"round-{k}" / "trainer_state.json").read_text())
        assert state["global_step"] == steps
    teacher_path = str(workspace[0] / "teacher")
    round_1 = str(out / "round-1")
    assert [(f, path) for f, path, _ in loads] == [
        ("teacher_model_name_or_path", teacher_path),
        ("teacher_model_name_or_path", round_1),
        ("model_name_or_path", round_1),
    ]
    saved = load_file(out / "round-1" / "model.safetensors")
    for _, _, weights in loads[1:]:  # round 2's teacher and its starting student are round 1's saved student
        assert weights.keys() == saved.keys()
        assert all(torch.equal(weights[k], saved[k]) for k in saved)

    main(["report", str(out)])
    report = (out / "report" / "report.md").read_text()
    assert "| round 1 | 2 |" in report and "| round 2 | 4 |" in report
    assert "(round 2, step 4)" in report


def test_round_marker_is_written_whole_or_not_at_all(workspace, monkeypatch):
    """A round whose marker cannot be written whole is not marked complete: a rerun trains it again."""
    recipe, out = rounds_recipe(workspace)
    rounds = parse_rounds(recipe)

    def run_training(model_args, data_args, config):
        os.makedirs(config.output_dir)
        # json.dump streams: written in place, the keys before the value it cannot encode would reach the marker.
        return {"eval_loss": 1.0, "unencodable": object()}

    monkeypatch.setattr(hf_distill.commands.rounds, "run_training", run_training)
    with pytest.raises(TypeError):
        run_rounds(rounds)
    assert os.listdir(out / "round-1") == []
    assert not rounds[0].is_complete()


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def test_crashed_round_resumes_where_it_stopped(workspace, loads, monkeypatch, caplog, capsys):
    recipe, out = rounds_recipe(workspace)
    real_trainer = hf_distill.commands.train.DistillTrainer

    class CrashingInRound2(real_trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.args.output_dir.endswith("round-2"):
                self.add_callback(CrashAt(3))  # after checkpoint-2 was saved

    monkeypatch.setattr(hf_distill.commands.train, "DistillTrainer", CrashingInRound2)
    with pytest.raises(SystemExit) as info:
        main(["train", recipe])
    assert info.value.code == 1  # a crash that is no user error: an internal error, with its traceback
    assert "RuntimeError: simulated crash at step 3" in capsys.readouterr().err
    assert (out / "round-1" / ROUND_MARKER).is_file()
    assert not (out / "round-2" / ROUND_MARKER).exists()
    assert (out / "round-2" / "checkpoint-2").is_dir()
    round_1 = {
        os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(out / "round-1")
        for name in names
    }

    monkeypatch.setattr(hf_distill.commands.train, "DistillTrainer", real_trainer)
    loads.clear()
    with caplog.at_level(logging.WARNING):
        main(["train", recipe])

    assert {path: os.stat(path).st_mtime_ns for path in round_1} == round_1  # round 1 untouched
    assert [path for _, path, _ in loads] == [str(out / "round-1")] * 2  # only round 2's teacher and student
    assert f"resuming from the last checkpoint in output_dir: {out / 'round-2' / 'checkpoint-2'}" in caplog.text
    assert (out / "round-2" / ROUND_MARKER).is_file()
    state = json.loads((out / "round-2" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [2, 4]
    with open(out / "round-2" / "metrics.csv") as f:
        rows = [(r["step"], r["split"]) for r in csv.DictReader(f)]
    assert rows == [("2", "train"), ("4", "train"), ("4", "eval")]
