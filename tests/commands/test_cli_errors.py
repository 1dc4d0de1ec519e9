"""The error contract of the `hf-distill` commands: a user error is one line, `hf-distill: error: <what> (<where>):
<why>; <what to do>`, exit code 2, a traceback only with `--debug` or `HF_DISTILL_DEBUG=1`, printed by the main
process only; any other exception is an internal error, with its traceback and a last line saying so (exit 1)."""

import os
import pickle
import re

import pytest

import hf_distill.commands.train
from hf_distill import cli
from hf_distill.cli import main
from hf_distill.user_errors import UserInputError

# what (where): why; fix. `what` holds no parenthesis; the others may.
FORMAT = re.compile(r"^hf-distill: error: (?P<what>[^()]+?) \((?P<where>.+?)\): (?P<why>.+); (?P<fix>[^;]+)$")


def run(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def one_error_line(capsys, argv: list[str]) -> str:
    code, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if line.startswith("hf-distill: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _rewrite(recipe: str, old: str, new: str) -> str:
    text = open(recipe).read()
    assert old in text
    path = recipe.replace(".yaml", "-rewritten.yaml")
    with open(path, "w") as f:
        f.write(text.replace(old, new))
    return path


# (command, arguments after the recipe, or a function of (tmp_path, recipe) giving the whole argv)
CASES = {
    "save_steps 0": ["train", "--save_strategy", "steps", "--save_steps", "0"],
    "eval_steps fractional above 1": ["train", "--eval_strategy", "steps", "--eval_steps", "2.5"],
    "logging_steps negative": ["train", "--logging_steps", "-2"],
    "max_steps -5": ["train", "--max_steps", "-5"],
    "batch size 0": ["train", "--per_device_train_batch_size", "0"],
    "report_to unknown": ["train", "--report_to", "no_such_tracker"],
    "output_dir empty": ["train", "--output_dir", ""],
    "temperature inf": ["check", "--temperature", "inf"],
    "teacher init kwargs not JSON": ["check", "--teacher_model_init_kwargs", "{dtype: bfloat16"],
    "teacher dtype unknown": ["train", "--teacher_model_init_kwargs", '{"dtype": "bf16"}'],
    "dataset_format without its columns": ["train", "--dataset_format", "prompt_completion"],
    "no such eval split": ["check", "--dataset_eval_split", "test"],
    "cache-teacher top_k 0": lambda tmp, recipe: [
        "cache-teacher", recipe, "--output_dir", str(tmp / "c"), "--top_k", "0",
    ],
    "cache without manifest": ["train", "--teacher_cache_dir", "/nowhere/cache"],
    "evaluate max_new_tokens 0": ["evaluate", "--max_new_tokens", "0"],
    "evaluate no such split": ["evaluate", "--split", "test"],
    "report of a folder without metrics": lambda tmp, recipe: ["report", str(tmp)],
    "missing model folder": ["check", "--teacher_model_name_or_path", "/no/such/teacher"],
    "evaluation without an eval split": lambda tmp, recipe: [
        "check", _rewrite(recipe, "dataset_eval_split: eval\n", "eval_strategy: epoch\n"),
    ],
    "empty data file": lambda tmp, recipe: ["train", recipe, "--dataset_name", str(_empty_file(tmp))],
}  # fmt: skip


def _empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_every_kind_of_user_error_is_one_line_in_the_format(workspace, capsys, no_weights, case):  # noqa: F811
    tmp_path, recipe = workspace
    spec = CASES[case]
    argv = spec(tmp_path, recipe) if callable(spec) else [spec[0], recipe, *spec[1:]]
    line = one_error_line(capsys, argv)
    assert FORMAT.match(line), line


def test_debug_flag_and_variable_add_the_traceback(workspace, capsys, monkeypatch):
    _, recipe = workspace
    argv = ["train", recipe, "--max_steps", "-5"]
    plain = one_error_line(capsys, argv)
    for flags, env in (["--debug"], None), ([], "1"):
        if env is not None:
            monkeypatch.setenv("HF_DISTILL_DEBUG", env)
        code, err = run(capsys, [*argv[:2], *flags, *argv[2:]])
        assert code == 2 and "Traceback (most recent call last)" in err and "RecipeError" in err
        assert err.strip().splitlines()[-1] == plain  # the same line, last
    monkeypatch.setenv("HF_DISTILL_DEBUG", "0")
    assert one_error_line(capsys, argv) == plain


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(workspace, capsys, monkeypatch):
    _, recipe = workspace

    def bug(*args):
        return {}["no such key"]

    monkeypatch.setattr(cli, "run_training", bug)
    code, err = run(capsys, ["train", recipe])
    assert code == 1
    assert "Traceback (most recent call last)" in err and "KeyError: 'no such key'" in err
    assert "hf-distill: error:" not in err
    assert err.strip().splitlines()[-1] == (
        "hf-distill: internal error: KeyError is a bug in hf_distill, not a problem in your input; please report it "
        "to the hf_distill maintainers with the command, the recipe and the traceback above (HF_DISTILL_DEBUG=1 shows "
        "the traceback of a user error too)"
    )


def test_a_message_over_several_lines_is_joined_not_cut(workspace, capsys, monkeypatch):
    _, recipe = workspace

    def library_error(*args):
        # A library's message quoted as the why: the lines after the first matter.
        raise UserInputError("model cannot be read", "x", "first line\n  second line\n", "fix it")

    monkeypatch.setattr(cli, "run_training", library_error)
    assert one_error_line(capsys, ["train", recipe]) == (
        "hf-distill: error: model cannot be read (x): first line second line; fix it"
    )


def test_a_deepspeed_config_that_disagrees_with_the_recipe_is_one_line_before_training(workspace, capsys, no_weights):  # noqa: F811
    tmp_path, recipe = workspace
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(
        '{"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2}}'
    )
    # Transformers would stop on it only once training starts, with the list on lines after the first.
    assert one_error_line(capsys, ["train", recipe, "--deepspeed", str(ds_config)]) == (
        f"hf-distill: error: DeepSpeed config disagrees with the recipe (deepspeed={str(ds_config)!r}): ds "
        "train_micro_batch_size_per_gpu=8 vs hf per_device_train_batch_size=4, ds gradient_accumulation_steps=2 vs hf "
        "gradient_accumulation_steps=1; set those DeepSpeed values to 'auto' (or to the recipe's)"
    )


def test_a_deepspeed_mismatch_found_when_training_starts_is_one_line(workspace, capsys, monkeypatch):
    """A DeepSpeed config given to `accelerate launch` is checked by Transformers only in `train()`; its error (the
    text of transformers.integrations.deepspeed, raised here in its place) becomes one line too."""
    _, recipe = workspace
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "accelerate_configs/zero3.json")

    def train(*args, **kwargs):
        raise ValueError(
            "Please correct the following DeepSpeed config values that mismatch TrainingArguments values:\n"
            "- ds train_micro_batch_size_per_gpu=8 vs hf per_device_train_batch_size=4\n"
            "- ds scheduler.params.total_num_steps=10 vs hf num_training_steps (calculated)=4\n"
            "The easiest method is to set these DeepSpeed config values to 'auto'."
        )

    monkeypatch.setattr(hf_distill.commands.train.DistillTrainer, "train", train)
    assert one_error_line(capsys, ["train", recipe]) == (
        "hf-distill: error: DeepSpeed config disagrees with the recipe (accelerate_configs/zero3.json): ds "
        "train_micro_batch_size_per_gpu=8 vs hf per_device_train_batch_size=4, ds scheduler.params.total_num_steps=10 "
        "vs hf num_training_steps (calculated)=4; set those DeepSpeed values to 'auto' (or to the recipe's)"
    )


def test_only_the_main_process_prints(workspace, capsys, monkeypatch):
    _, recipe = workspace
    monkeypatch.setenv("RANK", "1")
    code, err = run(capsys, ["train", recipe, "--max_steps", "-5"])
    assert code == 2 and "hf-distill" not in err and "Traceback" not in err


def test_user_errors_stay_value_errors_and_survive_pickling():
    err = UserInputError("bad JSON line", "data.jsonl:3", "Expecting value", "fix or delete that line")
    assert isinstance(err, ValueError)
    assert str(err) == "bad JSON line (data.jsonl:3): Expecting value; fix or delete that line"
    # A datasets.map worker sends its exception to the main process pickled.
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is UserInputError and (copy.what, copy.where, copy.why, copy.fix) == (
        "bad JSON line",
        "data.jsonl:3",
        "Expecting value",
        "fix or delete that line",
    )
    assert os.linesep not in UserInputError("a", "b", "c\nd", "e").line()
