"""Inputs and faults that used to train silently into something wrong: each is now refused with one line naming what
is wrong (or warned about, or survived). docs/errors.md lists the same rows."""

import logging

import pytest
from test_bad_input import error_line, no_weights, write_split  # noqa: F401 (no_weights is a fixture)

from hf_distill import DistillConfig
from hf_distill.recipe import RecipeError, load_yaml


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--max_steps", "-5"], "max_steps must be >= 1, or -1 to train num_train_epochs, got max_steps=-5"),
        (["--max_steps", "0"], "max_steps must be >= 1, or -1 to train num_train_epochs, got max_steps=0"),
        (
            ["--max_steps", "-1", "--num_train_epochs", "0"],
            "num_train_epochs must be > 0 when max_steps=-1 (nothing would train), got num_train_epochs=0.0",
        ),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be >= 1, got "
         "per_device_train_batch_size=0"),
        (["--per_device_eval_batch_size", "0"], "per_device_eval_batch_size must be >= 1, got "
         "per_device_eval_batch_size=0"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be >= 1, got "
         "gradient_accumulation_steps=0"),
        (["--fp16", "true"], "fp16=True needs a GPU, but this run is on the cpu; set fp16: false (bf16 works on cpu)"),
        (["--temperature", "inf"], "temperature must be finite, got temperature=inf"),
        (["--temperature", "nan"], "temperature must be > 0, got temperature=nan"),
    ],
)  # fmt: skip
def test_training_arguments_trainer_would_mishandle(workspace, capsys, no_weights, override, message):  # noqa: F811
    _, recipe = workspace
    assert error_line(capsys, ["train", recipe, *override]) == f"hf-distill: error: {message}"


def test_check_validates_an_fp16_recipe_as_if_on_the_cpu(workspace, capsys):
    _, recipe = workspace
    with open(recipe, "a") as f:
        f.write("fp16: true\n")
    from hf_distill.cli import main

    main(["check", str(recipe)])
    assert capsys.readouterr().out.strip() == f"{recipe}: ok"


@pytest.mark.parametrize(("temperature", "warned"), [(1e6, "uniform"), (0.01, "one-hot"), (2.0, None)])
def test_temperature_outside_the_sane_range_is_warned_about(tmp_path, caplog, temperature, warned):
    with caplog.at_level(logging.WARNING, logger="hf_distill.argument_checks"):
        DistillConfig(output_dir=str(tmp_path), temperature=temperature, report_to="none")
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_distill.argument_checks"]
    if warned is None:
        assert lines == []
    else:
        assert lines == [
            f"temperature={temperature} is outside [0.05, 20.0]: the softened distributions are nearly {warned}, so "
            "the divergence says little about the teacher"
        ]


def test_a_key_given_twice_in_a_recipe_names_the_key_and_both_lines(workspace, capsys, no_weights):  # noqa: F811
    _, recipe = workspace
    lines = open(recipe).read().splitlines()
    with open(recipe, "a") as f:
        f.write("beta: 0.2\nskew_lambda: 0.2\nbeta: 0.4\n")
    first, second = len(lines) + 1, len(lines) + 3
    message = f"hf-distill: error: {recipe}: duplicate key 'beta' at lines {first} and {second}; keep one"
    assert error_line(capsys, ["train", str(recipe)]) == message
    assert error_line(capsys, ["check", str(recipe)]) == message


def test_a_key_given_twice_inside_a_round_is_refused_too(tmp_path):
    recipe = tmp_path / "rounds.yaml"
    recipe.write_text("alpha: 0.5\nrounds:\n  - output_dir: a\n    max_steps: 2\n    max_steps: 3\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(str(recipe))
    assert str(info.value) == f"{recipe}: duplicate key 'max_steps' at lines 4 and 5; keep one"
    # Mappings of the same key at different places are not duplicates.
    recipe.write_text("rounds:\n  - max_steps: 2\n  - max_steps: 3\n")
    assert load_yaml(str(recipe)) == {"rounds": [{"max_steps": 2}, {"max_steps": 3}]}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [
                {"id": "a", "messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}]},
                {"id": "b", "messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "text": "w2"}]},
            ],
            "split 'train': example 1 (id 'b') cannot be read as 'messages': turn 1 (role 'assistant') has no "
            "'content' (its keys: ['role', 'text']); each turn needs 'role' and 'content'",
        ),
        (
            [{"messages": [{"role": "human", "content": "w1"}, {"role": "gpt", "content": "w2"}]}],
            "split 'train': example 0 cannot be read as 'messages': turn 0 has role='human'; expected one of system, "
            "developer, user, assistant, tool, ipython (its keys: ['content', 'role'])",
        ),
    ],
)
def test_chat_turns_without_content_or_with_an_unknown_role(workspace, capsys, no_weights, rows, message):  # noqa: F811
    tmp_path, recipe = workspace
    data = write_split(tmp_path, rows)
    line = error_line(capsys, ["train", recipe, "--dataset_name", data, "--dataset_eval_split", "train"])
    assert line == f"hf-distill: error: {message}"
