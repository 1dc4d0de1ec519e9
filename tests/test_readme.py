"""The README stays true: its config table is the one the DistillConfig docstring generates, and its commands name
files that exist."""

import dataclasses
import importlib.util
import os
import re

from transformers import TrainingArguments

from hf_distill import DistillConfig
from hf_distill.arguments.field_docs import all_field_docs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
# docs/ is no package: load the table generator from its file.
_spec = importlib.util.spec_from_file_location("config_table", os.path.join(ROOT, "docs", "config_table.py"))
config_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config_table)


def test_config_table_is_generated_from_the_docstring():
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    fields = [f.name for f in dataclasses.fields(DistillConfig) if f.name not in base]
    docs = all_field_docs(DistillConfig)
    for name in fields:
        assert name in docs, f"{name} is not documented in the docstring of DistillConfig or of its mixin"
    table = config_table.readme_table(README)
    assert table == config_table.config_table(), "README table is stale: run python docs/config_table.py --write"
    # DistillConfig's own fields in their order, then its mixins' (the generation engine, a teacher server).
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == list(docs) and sorted(docs) == sorted(fields)


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


def test_architecture_lists_every_module():
    layout = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    package = os.path.join(ROOT, "hf_distill")
    modules = []
    for folder, _, names in os.walk(package):
        sub = os.path.relpath(folder, package)
        if "__pycache__" in sub:
            continue
        if sub != ".":
            modules.append(f"{sub}/")
        modules += [name for name in names if name.endswith(".py") and name != "__init__.py"]
    missing = [name for name in modules if f"`{name}`" not in layout]
    assert "losses/" in modules and len(modules) > 1 and not missing, missing
