"""The README stays true: its config table lists every DistillConfig field, and its commands name files that exist."""

import dataclasses
import os
import re

from transformers import TrainingArguments

from hf_distill import DistillConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_config_table_lists_every_distill_field():
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    fields = [f.name for f in dataclasses.fields(DistillConfig) if f.name not in base]
    table = set(re.findall(r"^\| `(\w+)` \|", README, re.M))
    assert set(fields) <= table, set(fields) - table
    for name in fields:
        assert f"        {name} (`" in DistillConfig.__doc__, f"{name} is not documented in the docstring"


def test_paths_named_in_the_readme_exist():
    paths = set(
        re.findall(r"\b((?:recipes|accelerate_configs|benchmarks|docs|tests)/[\w./-]+\.(?:yaml|py|md))", README)
    )
    assert paths
    missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, missing


def test_readme_test_command_is_what_ci_runs():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    command = 'python -m pytest -m "not slow" -q'
    assert command in README and command in ci
    assert 'pip install torch==2.13.0 && pip install -e ".[test]"' in README
    assert "pip install torch==2.13.0" in ci and 'pip install -e ".[test]"' in ci
    # The environment the tests run under: CI's export line, and the line right above the command in the README.
    (ci_env,) = re.findall(r"^export .*$", ci, re.M)
    tests_block = README.split("## Tests", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert tests_block.splitlines() == [ci_env, command]


def test_layout_lists_every_module():
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    modules = [name for name in os.listdir(os.path.join(ROOT, "hf_distill")) if name.endswith(".py")]
    missing = [name for name in modules if name != "__init__.py" and f"`{name}`" not in layout]
    assert len(modules) > 1 and not missing, missing
