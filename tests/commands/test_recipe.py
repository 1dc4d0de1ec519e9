"""Recipes: YAML keys are dataclass fields, the command line overrides them, bad input is one clear line."""

import glob
import os
import subprocess
import sys

import pytest
import yaml
from testing_utils import REPO_ROOT

from hf_distill.cli import main
from hf_distill.commands.recipe import RecipeError, parse_recipe
from hf_distill.generation.engine_config import vllm_installed

ROOT = REPO_ROOT


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASE = "model_name_or_path: some/student\ndataset_name: some/dataset\noutput_dir: {out}\n"


def test_yaml_keys_fill_all_three_dataclasses_and_flags_override(tmp_path):
    recipe = write(
        tmp_path,
        BASE.format(out=tmp_path / "o")
        + "alpha: 0.3\ntemperature: 2\nmax_length: 64\nreport_to: [tensorboard]\n"
        + "teacher_model_init_kwargs:\n  dtype: bfloat16\nbf16: false\n",
    )
    model_args, data_args, config = parse_recipe(recipe, ["--max_steps", "5", "--alpha", "0.7"])
    assert model_args.model_name_or_path == "some/student"
    assert data_args.max_length == 64
    assert (config.alpha, config.temperature, config.max_steps) == (0.7, 2.0, 5)
    assert config.report_to == ["tensorboard"]
    assert config.teacher_model_init_kwargs == {"dtype": "bfloat16"}


@pytest.mark.parametrize(
    ("extra", "overrides", "message"),
    [
        ("temperture: 2\n", [], r"^unknown key \('temperture' in .*\): no argument .*; did you mean 'temperature'\?$"),
        ("", ["--lerning_rate", "1"], r"^unknown key \('lerning_rate' in the command line\): .*'learning_rate'\?$"),
        ("alpha: high\n", [], r"^invalid alpha \(alpha='high'\): not a valid float; give a value of type float$"),
        ("max_steps: [1, 2]\n", [], r"^invalid max_steps \(max_steps='\[1, 2\]'\): not a valid int; give a value"),
        ("alpha: 3\n", [], "alpha must be in \\[0, 1\\], got alpha=3.0"),
        (
            "loss_type: kl\n",
            [],
            r"^invalid loss_type \(loss_type='kl'\): not one of its choices; use one of 'forward_kl', ",
        ),
        ("max_length: 1\n", [], r"^invalid max_length \(max_length=1\): must be >= 2; set max_length to 2 or more$"),
    ],
)
def test_bad_recipes_raise_one_line(tmp_path, extra, overrides, message):
    recipe = write(tmp_path, BASE.format(out=tmp_path / "o") + extra)
    with pytest.raises(RecipeError, match=message) as info:
        parse_recipe(recipe, overrides)
    assert "\n" not in str(info.value)


def test_missing_required_key(tmp_path):
    recipe = write(tmp_path, "dataset_name: x\n")
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert str(info.value) == (
        "missing key (model_name_or_path): a run needs it; set model_name_or_path in the recipe (or "
        "--model_name_or_path)"
    )


def test_yaml_syntax_error_reports_line(tmp_path):
    recipe = write(tmp_path, "model_name_or_path: a\nalpha: [0.5\ntemperature: 2\n")
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    # The flow sequence opened on line 2 is still open when PyYAML meets the ':' after `temperature` on line 3.
    assert str(info.value) == (
        f"YAML syntax error ({recipe}:3, column 12): expected ',' or ']', but got ':'; fix the recipe there"
    )


def test_recipe_must_be_a_mapping(tmp_path):
    recipe = write(tmp_path, "- a\n- b\n")
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert str(info.value) == f"recipe is not a mapping ({recipe}): it holds a list; write one key: value a line"


def test_cli_prints_one_line_and_no_traceback(tmp_path):
    recipe = write(tmp_path, BASE.format(out=tmp_path / "o") + "temperture: 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "hf_distill.cli", "check", recipe], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("hf-distill")]
    assert lines == [
        f"hf-distill: error: unknown key ('temperture' in {recipe}): no argument of a run has this name; did you mean "
        "'temperature'?"
    ]
    assert "Traceback" not in result.stderr


def test_check_finds_missing_local_paths(tmp_path, capsys):
    recipe = write(
        tmp_path,
        f"model_name_or_path: ./no/such/student\ndataset_name: data.jsonl\nalpha: 1.0\noutput_dir: {tmp_path / 'o'}\n",
    )
    with pytest.raises(SystemExit) as info:
        main(["check", recipe])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "hf-distill: error: model folder not found (model_name_or_path='./no/such/student'): no such folder; fix the "
        "path (a hub id is org/name)\n"
    )


def test_check_requires_a_teacher_unless_alpha_is_one(tmp_path, capsys):
    recipe = write(tmp_path, BASE.format(out=tmp_path / "o"))
    with pytest.raises(SystemExit):
        main(["check", recipe])
    assert capsys.readouterr().err == (
        "hf-distill: error: no teacher (alpha=0.5): alpha < 1 distils from a teacher; set teacher_model_name_or_path "
        "(or alpha: 1.0 for plain fine-tuning)\n"
    )
    main(["check", recipe, "--alpha", "1.0"])
    assert "ok" in capsys.readouterr().out


RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))


def _uses_vllm(path: str) -> bool:
    with open(path) as f:
        return yaml.safe_load(f).get("use_vllm") is True


VLLM_RECIPES = [path for path in RECIPES if _uses_vllm(path)]


def test_every_shipped_recipe_passes_check(capsys):
    """Every recipe, those that generate with vLLM included where vLLM is installed (the next test checks them
    where it is not)."""
    recipes = RECIPES if vllm_installed() else [path for path in RECIPES if path not in VLLM_RECIPES]
    assert len(recipes) >= 3
    main(["check", *recipes])
    assert capsys.readouterr().out.count(": ok") == len(recipes)


@pytest.mark.parametrize("recipe", VLLM_RECIPES, ids=os.path.basename)
def test_a_vllm_recipe_without_vllm_is_refused_with_the_install_command(recipe, capsys):
    if vllm_installed():
        pytest.skip("vLLM is installed here: test_every_shipped_recipe_passes_check checked this recipe")
    with pytest.raises(SystemExit):
        main(["check", recipe])
    assert capsys.readouterr().err == (
        "hf-distill: error: vLLM is not installed (use_vllm=True): this setting generates with vLLM, which this "
        "Python cannot find; install it with: bash scripts/install_vllm.sh\n"
    )


def test_the_demo_ships_a_vllm_recipe():
    assert [os.path.relpath(path, ROOT) for path in VLLM_RECIPES] == ["recipes/demo/on_policy_vllm.yaml"]
