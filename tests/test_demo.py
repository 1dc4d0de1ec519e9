"""The shipped offline demo, end to end with a few steps: train, reload the student, generate."""

import importlib.util
import json
import os

from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from hf_distill.cli import main
from hf_distill.data.raw_dataset import split_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo")


def test_demo_assets_are_shipped():
    assert set(split_files(os.path.join(DEMO, "data"))) == {"train", "eval"}
    assert os.path.isfile(os.path.join(DEMO, "teacher", "model.safetensors"))
    teacher = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer"))
    assert teacher.config.vocab_size == len(tokenizer)


def test_demo_recipe_runs_and_the_student_generates(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository root, as in the README
    out = tmp_path / "student"
    main(
        ["train", "recipes/demo/distill.yaml", "--output_dir", str(out), "--max_steps", "3", "--max_train_samples",
         "96", "--max_eval_samples", "32", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true"]
    )  # fmt: skip
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.hidden_size == 96 and student.num_parameters() < 1_000_000
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where does Kettle live?"}], tokenize=False, add_generation_prompt=True
    )
    generator = pipeline("text-generation", model=str(out), device="cpu")
    # After 3 steps the student repeats a special token, which the pipeline drops: the text is empty and its length
    # says nothing. What must hold is that every id the student can generate is a token of the tokenizer saved with it.
    generator(prompt, max_new_tokens=8, do_sample=False, return_full_text=False)
    assert student.config.vocab_size == len(tokenizer)
    card = (out / "README.md").read_text()
    assert "recipes/demo/teacher" in card and "forward_kl" in card

    main(["evaluate", "recipes/demo/distill.yaml", "--output_dir", str(out), "--max_eval_samples", "16",
          "--max_new_tokens", "4"])  # fmt: skip
    card = ModelCard.load(out / "README.md")
    assert {r.metric_type for r in card.data.eval_results} == {"exact_match", "token_f1", "perplexity"}
    assert card.data.eval_results[0].dataset_split == "eval" and card.data.model_name == "student"
    assert "## Evaluation" in card.text and "| stories |" in card.text and "forward_kl" in card.text


def test_demo_data_regenerates_byte_for_byte(tmp_path, monkeypatch):
    """The committed data is what `recipes/demo/make_data.py` writes: the demo's numbers can be reproduced."""
    spec = importlib.util.spec_from_file_location("make_data", os.path.join(DEMO, "make_data.py"))
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    monkeypatch.setattr(make_data, "OUT_DIR", str(tmp_path))
    make_data.main()
    for name in ("train.jsonl", "eval.jsonl"):
        with open(os.path.join(DEMO, "data", name), "rb") as shipped:
            assert (tmp_path / name).read_bytes() == shipped.read(), name


def test_cross_tokenizer_demo_assets_and_recipe(tmp_path, monkeypatch):
    """recipes/demo/tokenizer_b is what make_tokenizer_b.py writes, teacher_b has one logit per token of it, and
    recipes/demo/cross_tokenizer.yaml distils it into the demo student (a few steps)."""
    monkeypatch.syspath_prepend(DEMO)
    spec = importlib.util.spec_from_file_location("make_tokenizer_b", os.path.join(DEMO, "make_tokenizer_b.py"))
    make_tokenizer_b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tokenizer_b)
    monkeypatch.setattr(make_tokenizer_b, "OUT_DIR", str(tmp_path / "tokenizer_b"))
    make_tokenizer_b.main()
    for name in os.listdir(os.path.join(DEMO, "tokenizer_b")):
        with open(os.path.join(DEMO, "tokenizer_b", name), "rb") as shipped:
            assert (tmp_path / "tokenizer_b" / name).read_bytes() == shipped.read(), name
    teacher = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher_b"))
    assert teacher.config.vocab_size == len(AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer_b")))

    monkeypatch.chdir(ROOT)
    out = tmp_path / "student"
    main(
        ["train", "recipes/demo/cross_tokenizer.yaml", "--output_dir", str(out), "--max_steps", "3",
         "--max_train_samples", "96", "--max_eval_samples", "32", "--eval_strategy", "no", "--save_strategy", "no",
         "--disable_tqdm", "true", "--logging_steps", "1"]
    )  # fmt: skip
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["kd_loss"] > 0 for h in state["log_history"] if "kd_loss" in h] == [True] * 3
    assert "recipes/demo/teacher_b" in (out / "README.md").read_text()
