"""`hf-distill train` end to end on tiny local models: outputs, model card, reload, generation, hub push."""

import csv
import fnmatch
import json
import os
import types

import pytest
import torch
import transformers.trainer
from testing_utils import interrupted, tiny_llama, variable_length_dataset, word_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import hf_distill.models.loading
from hf_distill import DistillTrainer
from hf_distill.cli import main
from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import build_trainer
from hf_distill.models.loading import teacher_init_kwargs


def test_train_writes_a_usable_student(workspace):
    tmp_path, recipe = workspace
    main(["train", recipe, "--max_steps", "3"])
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "train_results.json"):
        assert (out / name).is_file(), name
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_loss", "eval_ce_loss", "eval_kd_loss", "eval_teacher_agreement"} <= set(eval_results)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # the command-line override beat the recipe's max_steps: 4
    assert any("kd_loss" in entry for entry in state["log_history"])

    card = (out / "README.md").read_text()
    for fact in (
        str(tmp_path / "teacher"),
        "jsd",
        "Temperature | 2",
        "Alpha (CE weight) | 0.5",
        str(tmp_path / "data"),
    ):
        assert fact in card, fact
    assert "Optimizer steps | 3" in card
    assert f"eval_loss | {eval_results['eval_loss']:.4f}" in card

    with open(out / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == sorted(f"eval-{i}" for i in range(8))
    assert {(r["step"], r["split"]) for r in rows} == {("3", "eval")}
    tokens = sum(int(r["tokens"]) for r in rows)
    for column in ("ce_loss", "kd_loss", "teacher_agreement"):
        weighted = sum(float(r[column]) * int(r["tokens"]) for r in rows) / tokens
        assert weighted == pytest.approx(eval_results[f"eval_{column}"], rel=1e-5), column

    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.hidden_size == 32
    generator = pipeline("text-generation", model=str(out), device="cpu")
    text = generator("<user> w1 w2 w3 <asst>", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("<user> w1 w2 w3 <asst>") and len(text.split()) > 5


def test_rerun_resumes_from_the_last_checkpoint(workspace):
    tmp_path, recipe = workspace
    argv = ["train", recipe, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    main([*argv, "--save_total_limit", "2"])
    interrupted(tmp_path / "out", after_step=2)  # as a kill after checkpoint-2 leaves it
    main(argv)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [2, 4]  # step 2 logged once: the second run continued, it did not start over


def test_push_to_hub_uploads_student_and_card(workspace, monkeypatch):
    tmp_path, recipe = workspace
    uploads = []

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return types.SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
            files = []
            for root, _, names in os.walk(folder_path):
                for name in names:
                    rel = os.path.relpath(os.path.join(root, name), folder_path)
                    if not any(
                        fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split(os.sep)[0], p) for p in ignore_patterns
                    ):
                        files.append(rel)
            uploads.append((repo_id, sorted(files), (tmp_path / "out" / "README.md").read_text()))

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeHub())
    main(["train", recipe, "--push_to_hub", "true", "--hub_model_id", "me/tiny-student", "--hub_strategy", "end"])
    repo_id, files, card = uploads[-1]
    assert repo_id == "me/tiny-student"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert not any(f.startswith("checkpoint-") for f in files)
    assert "# tiny-student" in card and "hf_distill" in card


def test_final_evaluation_is_not_repeated(workspace):
    tmp_path, recipe = workspace
    main(["train", recipe, "--eval_strategy", "steps", "--eval_steps", "2"])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_loss" in h] == [2, 4]
    eval_results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert eval_results["eval_loss"] == state["log_history"][-2]["eval_loss"]


def save_pretrained_student(tmp_path):
    """A student folder with weights and tokenizer, for `student_init: pretrained`."""
    folder = tmp_path / "student"
    tiny_llama(seed=1, hidden=32, layers=1).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("student_init", ["from_config", "pretrained"])
def test_student_model_arguments_reach_the_loaded_models(workspace, monkeypatch, student_init):
    tmp_path, recipe = workspace
    # trust_remote_code leaves no trace on a model that ships no code: the loaders' arguments are recorded instead.
    calls = []
    loaders = [(AutoModelForCausalLM, "from_pretrained"), (AutoModelForCausalLM, "from_config")]
    for cls, name in [*loaders, (AutoTokenizer, "from_pretrained")]:
        original = getattr(cls, name)

        def spy(what, *args, _original=original, _name=f"{cls.__name__}.{name}", **kwargs):
            calls.append((_name, what, kwargs))
            return _original(what, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    overrides = ["--dtype", "bfloat16", "--attn_implementation", "eager", "--trust_remote_code", "true"]
    if student_init == "pretrained":
        overrides += ["--model_name_or_path", save_pretrained_student(tmp_path), "--student_init", "pretrained"]
    trainer = build_trainer(*parse_recipe(recipe, overrides))

    student, teacher = trainer.model, trainer.teacher_model
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}  # dtype is the student's alone
    assert student.config._attn_implementation == teacher.config._attn_implementation == "eager"
    models = sorted(
        (name, what if isinstance(what, str) else type(what).__name__)
        for name, what, _ in calls
        if name.startswith("AutoModelForCausalLM")
    )
    if student_init == "pretrained":
        student_load = ("AutoModelForCausalLM.from_pretrained", str(tmp_path / "student"))
    else:
        student_load = ("AutoModelForCausalLM.from_config", "LlamaConfig")
    assert models == sorted([student_load, ("AutoModelForCausalLM.from_pretrained", str(tmp_path / "teacher"))])
    assert any(name == "AutoTokenizer.from_pretrained" for name, _, _ in calls)
    assert all(kwargs.get("trust_remote_code") is True for _, _, kwargs in calls), calls


@pytest.mark.parametrize("student_init", ["from_config", "pretrained"])
def test_model_card_names_the_student_base(workspace, student_init):
    tmp_path, recipe = workspace
    overrides = ["--max_steps", "1"]
    if student_init == "pretrained":
        student = save_pretrained_student(tmp_path)
        overrides += ["--model_name_or_path", student, "--student_init", "pretrained"]
    main(["train", recipe, *overrides])
    card = (tmp_path / "out" / "README.md").read_text()
    if student_init == "pretrained":
        assert f"| Student base | `{student}` |" in card
        assert f"base_model: {student}\n" in card  # the hub links the student to the model it started from
    else:
        assert "| Student base | trained from scratch |" in card and "base_model" not in card


@pytest.fixture
def teacher_loads(monkeypatch):
    """Init arguments of every teacher loaded by path, by whichever loader."""
    calls = []
    load = hf_distill.models.loading.load_causal_lm

    def recording_load(name, field_name, **kwargs):
        if field_name == "teacher_model_name_or_path":
            calls.append(kwargs)
        return load(name, field_name, **kwargs)

    monkeypatch.setattr(hf_distill.models.loading, "load_causal_lm", recording_load)
    return calls


def test_teacher_init_kwargs_rule(workspace):
    _, recipe = workspace
    model_args, _, config = parse_recipe(recipe, ["--attn_implementation", "eager", "--dtype", "bfloat16"])
    assert teacher_init_kwargs(config) == {}
    assert teacher_init_kwargs(config, model_args) == {"attn_implementation": "eager", "trust_remote_code": False}
    config.teacher_model_init_kwargs = '{"attn_implementation": "sdpa", "trust_remote_code": true}'
    assert teacher_init_kwargs(config) == {"attn_implementation": "sdpa", "trust_remote_code": True}
    assert teacher_init_kwargs(config, model_args) == {"attn_implementation": "sdpa", "trust_remote_code": True}


def test_trainer_and_pipeline_load_a_teacher_path_alike(workspace, teacher_loads):
    """teacher_model_init_kwargs reaches the teacher whether the pipeline or a drop-in trainer loads it by path."""
    _, recipe = workspace
    eager = ["--teacher_model_init_kwargs", '{"attn_implementation": "eager", "dtype": "bfloat16"}']
    from_pipeline = build_trainer(*parse_recipe(recipe, eager)).teacher_model
    config = parse_recipe(recipe, eager)[2]
    from_trainer = DistillTrainer(
        model=tiny_llama(seed=1), args=config, train_dataset=variable_length_dataset()
    ).teacher_model
    for teacher in (from_pipeline, from_trainer):
        assert teacher.config._attn_implementation == "eager"
        assert teacher.dtype == torch.bfloat16
    # The pipeline knows the student's model arguments, the trainer does not: its own default is all that differs.
    pipeline_kwargs, trainer_kwargs = teacher_loads
    assert pipeline_kwargs == {**trainer_kwargs, "trust_remote_code": False}


def test_teacher_takes_the_students_attention_unless_the_recipe_overrides_it(workspace, teacher_loads):
    tmp_path, recipe = workspace
    student_eager = ["--attn_implementation", "eager"]
    trainer = build_trainer(*parse_recipe(recipe, student_eager))
    assert trainer.model.config._attn_implementation == trainer.teacher_model.config._attn_implementation == "eager"
    recipe_sdpa = [*student_eager, "--teacher_model_init_kwargs", '{"attn_implementation": "sdpa"}']
    trainer = build_trainer(*parse_recipe(recipe, recipe_sdpa))
    assert trainer.model.config._attn_implementation == "eager"
    assert trainer.teacher_model.config._attn_implementation == "sdpa"
    # The cache builder loads by the same rule.
    main(["cache-teacher", recipe, *student_eager, "--output_dir", str(tmp_path / "cache"), "--top_k", "4"])
    assert [kwargs["attn_implementation"] for kwargs in teacher_loads] == ["eager", "sdpa", "eager"]
