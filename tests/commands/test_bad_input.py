"""The bad-input matrix of `hf-distill train`: one line naming the problem, exit code 2, no traceback, and no model
weights loaded. docs/errors.md lists the same rows."""

import pytest
from testing_utils import WORDS, error_line, tiny_llama, word_tokenizer, write_split
from transformers import T5Config


def test_teacher_tokenizer_with_other_ids(workspace, capsys, no_weights):
    tmp_path, recipe = workspace
    swapped = word_tokenizer()
    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab["w1"], vocab["w2"] = vocab["w2"], vocab["w1"]
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    swapped._tokenizer = backend
    swapped.save_pretrained(tmp_path / "teacher")
    line = error_line(capsys, ["train", recipe, "--tokenizer_name_or_path", str(tmp_path / "student_tok")])
    assert "cannot load a tokenizer" in line
    word_tokenizer().save_pretrained(tmp_path / "student_tok")
    line = error_line(capsys, ["train", recipe, "--tokenizer_name_or_path", str(tmp_path / "student_tok")])
    assert line.startswith(
        "hf-distill: error: teacher and student tokenizers differ (tokenizer_name_or_path, "
        "teacher_model_name_or_path): 2 tokens map to different ids (student vs teacher: "
    )


def test_teacher_vocabulary_wider_than_padding(workspace, capsys, no_weights):
    tmp_path, recipe = workspace
    tiny_llama(seed=2, vocab=200).config.save_pretrained(tmp_path / "wide_teacher")
    line = error_line(
        capsys,
        ["train", recipe, "--teacher_model_name_or_path", str(tmp_path / "wide_teacher"), "--tokenizer_name_or_path",
         str(tmp_path / "teacher")],
    )  # fmt: skip
    assert "student vocab size 64 and teacher vocab size 200" in line


@pytest.mark.parametrize("field", ["teacher_model_name_or_path", "model_name_or_path"])
def test_missing_model_folder(workspace, capsys, no_weights, field):
    tmp_path, recipe = workspace
    tokenizer = ["--tokenizer_name_or_path", str(tmp_path / "teacher")]
    line = error_line(capsys, ["train", recipe, f"--{field}", str(tmp_path / "nowhere"), *tokenizer])
    assert f"{field}='{tmp_path / 'nowhere'}'" in line and "cannot load a model config" in line


def test_student_that_is_not_a_causal_lm(workspace, capsys, no_weights):
    tmp_path, recipe = workspace
    T5Config(vocab_size=64, d_model=16, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    line = error_line(
        capsys,
        [
            "train",
            recipe,
            "--model_name_or_path",
            str(tmp_path / "t5"),
            "--student_init",
            "pretrained",
            "--tokenizer_name_or_path",
            str(tmp_path / "teacher"),
        ],
    )
    assert line == (
        f"hf-distill: error: not a causal language model (model_name_or_path='{tmp_path / 't5'}'): it is a 't5' "
        "model; use a model AutoModelForCausalLM loads"
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"title": "x"}],
            "dataset in no known format (split 'train'): its columns are ['title']; expected ['text'] or ['prompt', "
            "'completion'] or ['messages'] or ['prompt']; rename its columns, or set dataset_format",
        ),
        ([{"messages": [{"role": "user", "content": "w1 w2"}]}], "no example with a target token"),
        ([{"prompt": {"a": 1}, "completion": "w1"}], "cannot be read as 'prompt_completion'"),
    ],
)
def test_bad_datasets(workspace, capsys, no_weights, rows, message):
    tmp_path, recipe = workspace
    data = write_split(tmp_path, rows)
    line = error_line(capsys, ["train", recipe, "--dataset_name", data, "--dataset_eval_split", "train"])
    assert message in line


def test_missing_dataset_path(workspace, capsys, no_weights):
    tmp_path, recipe = workspace
    line = error_line(capsys, ["train", recipe, "--dataset_name", str(tmp_path / "nope.jsonl")])
    assert "no such file or folder" in line


LOSS_FIX = "; fix it in the recipe or on the command line"
TRACK_SAMPLES = (
    "invalid track_samples (track_samples=['foo']): may only hold 'eval' and 'train'; keep some of 'eval', 'train'"
)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # The loss functions' own checks, run by DistillConfig: their message, as the why.
        (["--alpha", "1.5"], f"invalid value (DistillConfig): alpha must be in [0, 1], got alpha=1.5{LOSS_FIX}"),
        (
            ["--temperature", "0"],
            f"invalid value (DistillConfig): temperature must be > 0, got temperature=0.0{LOSS_FIX}",
        ),
        (
            ["--loss_type", "jsd", "--beta", "1"],
            f"invalid value (DistillConfig): beta must be in (0, 1) for loss_type='jsd', got beta=1.0{LOSS_FIX}",
        ),
        (
            ["--skew_lambda", "1"],
            f"invalid value (DistillConfig): skew_lambda must be in [0, 1), got skew_lambda=1.0{LOSS_FIX}",
        ),
        (
            ["--early_stop_patience", "2"],
            "early stopping without evaluation (early_stop_patience=2): it stops on the eval loss, and eval_strategy "
            "is 'no'; set eval_strategy to 'steps' or 'epoch'",
        ),
        (
            ["--max_nonfinite_steps", "-1"],
            "invalid max_nonfinite_steps (max_nonfinite_steps=-1): must be >= 0; set it to 0 or more",
        ),
        (
            ["--loss_chunk_size", "-1"],
            "invalid loss_chunk_size (loss_chunk_size=-1): must be >= 0; set it to 0 (dense) or a chunk size in "
            "tokens",
        ),
        (["--track_samples", "foo"], TRACK_SAMPLES),
        (
            ["--teacher_cache_mode", "dense"],
            "invalid teacher_cache_mode (teacher_cache_mode='dense'): not one of its choices; use one of "
            "'renormalized', 'tail_bucket', 'teacher_renormalized'",
        ),
        (
            ["--temperture", "2"],
            "unknown key ('temperture' in the command line): no argument of a run has this name; did you mean "
            "'temperature'?",
        ),
    ],
)
def test_bad_config_values(workspace, capsys, no_weights, override, message):
    _, recipe = workspace
    assert error_line(capsys, ["train", recipe, *override]) == f"hf-distill: error: {message}"


def test_bad_list_value_in_the_recipe(workspace, capsys, no_weights):
    """A YAML list reaches the config as a list, not through argparse: the same one line as `--track_samples foo`."""
    _, recipe = workspace
    with open(recipe, "a") as f:
        f.write("track_samples: [foo]\n")
    line = error_line(capsys, ["train", recipe])
    assert line == f"hf-distill: error: {TRACK_SAMPLES}"


def test_yaml_syntax_error_names_the_line(workspace, capsys, no_weights):
    tmp_path, _ = workspace
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("alpha: 0.5\nteacher: [a, b\nmax_steps: 3\n")
    # PyYAML reports where the unclosed flow sequence of line 2 breaks: the ':' after `max_steps` on line 3.
    assert error_line(capsys, ["train", str(recipe)]) == (
        f"hf-distill: error: YAML syntax error ({recipe}:3, column 10): expected ',' or ']', but got ':'; fix the "
        "recipe there"
    )


@pytest.mark.parametrize("command", ["train", "check"])
def test_recipe_file_that_does_not_exist(tmp_path, monkeypatch, capsys, no_weights, command):
    monkeypatch.chdir(tmp_path)
    assert error_line(capsys, [command, "nowhere.yaml"]) == (
        "hf-distill: error: recipe file not found (nowhere.yaml): no such file; fix the path"
    )


@pytest.mark.parametrize("teachers", ["t5", "ensemble"])
@pytest.mark.parametrize("tokenizer_source", ["teacher folder", "recipe"])
def test_teacher_that_is_not_a_causal_lm(workspace, capsys, no_weights, teachers, tokenizer_source):
    tmp_path, recipe = workspace
    t5 = tmp_path / "t5"
    T5Config(vocab_size=64, d_model=16, num_layers=1, num_heads=2).save_pretrained(t5)
    word_tokenizer().save_pretrained(t5)  # as a real model folder has: the from_config student's default tokenizer
    if teachers == "ensemble":
        teacher, text = tmp_path / "teacher", open(recipe).read()
        with open(recipe, "w") as f:
            f.write(
                text.replace(
                    f"teacher_model_name_or_path: {teacher}\n", f"teacher_model_name_or_path: [{teacher}, {t5}]\n"
                )
            )
        overrides = []
    else:
        overrides = ["--teacher_model_name_or_path", str(t5)]
    if tokenizer_source == "recipe":
        overrides += ["--tokenizer_name_or_path", str(tmp_path / "teacher")]
    expected = (
        f"hf-distill: error: not a causal language model (teacher_model_name_or_path='{t5}'): it is a 't5' model; use "
        "a model AutoModelForCausalLM loads"
    )
    assert error_line(capsys, ["train", recipe, *overrides]) == expected
    assert error_line(capsys, ["check", recipe, *overrides]) == expected


def test_training_that_keeps_producing_nan_ends_in_one_line(workspace, capsys):
    """The NaN guard's stop is the user's to fix (a learning rate of 1e30 here): one line naming the step and its
    examples, exit code 2, no traceback."""
    _, recipe = workspace
    argv = ["train", recipe, "--learning_rate", "1e30", "--max_nonfinite_steps", "0", "--eval_strategy", "no"]
    line = error_line(capsys, argv)
    assert line.startswith(
        "hf-distill: error: NaN or inf gradients (step 2): 1 consecutive steps had them (max_nonfinite_steps=0); "
        "examples of step 2: train-"
    )
