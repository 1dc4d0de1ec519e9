"""A run knows its own arguments (`hf_distill.run.run_arguments`): a rerun with other shaping arguments is refused
with the fields that changed, one of a finished run rewrites nothing, and resume with the same ones stays exact."""

import json
import os

import pytest
from safetensors.torch import load_file
from testing_utils import interrupted

from hf_distill.cli import main
from hf_distill.commands.recipe import parse_recipe
from hf_distill.run.run_arguments import NOT_SHAPING, RUN_ARGUMENTS, shaping_arguments


def files(out):
    """Every file of a run folder with its modification time and size."""
    found = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, out)] = (os.stat(path).st_mtime_ns, os.path.getsize(path))
    return found


def test_a_run_records_its_shaping_arguments(workspace):
    tmp_path, recipe = workspace
    main(["train", recipe, "--max_steps", "2"])
    recorded = json.loads((tmp_path / "out" / RUN_ARGUMENTS).read_text())
    arguments = recorded["arguments"]
    assert recorded["finished"] is True and len(recorded["sha256"]) == 64
    assert arguments["max_steps"] == 2 and arguments["temperature"] == 2.0 and arguments["num_processes"] == 1
    assert arguments["teacher_model_name_or_path"] == str(tmp_path / "teacher")
    assert not NOT_SHAPING & set(arguments)


def test_a_rerun_of_a_finished_run_with_other_arguments_is_refused_and_rewrites_nothing(workspace, capsys):
    """Before: trained 0 steps and rewrote the card as if temperature 2.5 had trained the student."""
    tmp_path, recipe = workspace
    main(["train", recipe, "--max_steps", "2"])
    out = tmp_path / "out"
    before = files(out)
    card = (out / "README.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", recipe, "--max_steps", "2", "--temperature", "2.5"])
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("hf-distill: error:")]
    assert line == (
        f"hf-distill: error: output_dir holds a run with other arguments (output_dir='{out}'): temperature: 2.0 -> "
        "2.5 (1 changed); resuming would train on other arguments than the run's; set another output_dir, or "
        "overwrite_output_dir: true to delete that run and start anew"
    )
    assert files(out) == before and (out / "README.md").read_text() == card


def test_a_rerun_of_a_finished_run_with_the_same_arguments_says_so_and_rewrites_nothing(workspace, caplog):
    tmp_path, recipe = workspace
    main(["train", recipe, "--max_steps", "2"])
    out = tmp_path / "out"
    before = files(out)
    # Settings that shape nothing (how often a run logs and saves) do not count as other arguments.
    main(["train", recipe, "--max_steps", "2", "--logging_steps", "7", "--save_total_limit", "3"])
    assert "finished with these arguments: nothing to do" in caplog.text
    assert files(out) == before


def test_overwrite_output_dir_trains_anew(workspace):
    tmp_path, recipe = workspace
    main(["train", recipe, "--max_steps", "2"])
    out = tmp_path / "out"
    (out / "leftover.txt").write_text("from the earlier run")
    main(["train", recipe, "--max_steps", "3", "--temperature", "2.5", "--overwrite_output_dir", "true"])
    recorded = json.loads((out / RUN_ARGUMENTS).read_text())
    assert recorded["arguments"]["temperature"] == 2.5 and recorded["finished"] is True
    assert not (out / "leftover.txt").exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert "Temperature | 2.5" in (out / "README.md").read_text()


def test_resume_with_the_same_arguments_is_exact(workspace):
    """A run stopped after its step-2 checkpoint (the final save undone) resumes to the uninterrupted weights."""
    tmp_path, recipe = workspace
    argv = ["train", recipe, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    main([*argv, "--output_dir", str(tmp_path / "whole")])
    main([*argv, "--save_total_limit", "2"])
    out = interrupted(tmp_path / "out", after_step=2)  # as a kill after checkpoint-2 leaves it
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-2"]
    main(argv)
    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all((whole[k] - resumed[k]).abs().max() <= 1e-6 for k in whole)


def test_shaping_arguments_of_a_recipe(workspace):
    _, recipe = workspace
    model_args, data_args, config = parse_recipe(str(recipe), ["--logging_steps", "3"])
    arguments = shaping_arguments(model_args, data_args, config)
    assert "logging_steps" not in arguments and "output_dir" not in arguments
    assert {"learning_rate", "seed", "alpha", "model_name_or_path", "dataset_name", "max_length"} <= set(arguments)
    json.dumps(arguments)  # JSON values only


def test_a_run_refused_before_its_first_checkpoint_leaves_nothing_to_guard(workspace, capsys):
    """A run stopped before its first checkpoint (killed, or refused for an input checked once the data is read, such
    as a teacher cache's fingerprint) has nothing to resume: the next run, with other arguments, starts anew."""
    tmp_path, recipe = workspace
    main(["train", recipe, "--max_steps", "2", "--save_strategy", "no"])
    out = interrupted(tmp_path / "out", after_step=0)  # as a kill during the first step leaves it
    main(["train", recipe, "--max_steps", "2", "--save_strategy", "no", "--temperature", "2.5"])
    assert json.loads((out / RUN_ARGUMENTS).read_text())["arguments"]["temperature"] == 2.5
